"""Adapters between MONAI Label and the `samri` library (imported by the server as ``lib``).

Modules here use relative imports only, so they also import as ``apps.samri.lib`` from the
repository root (tests, ``samri bench``). Nothing heavy happens at import time.
"""
