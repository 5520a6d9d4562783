"""SAMRI: the Segment Anything Model specialised for MRI, as a library for MONAI Label.

Nothing heavy is imported here; import the submodules you need (`samri.models`,
`samri.predict`, ...).
"""

__version__ = "0.1.0"
