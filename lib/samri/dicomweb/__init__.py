"""DICOMweb for the OHIF path: Debian's Orthanc as the local DICOMweb server, NIfTI <-> DICOM MR
series with exact geometry, STOW-RS upload, and DICOM SEG labels that round-trip voxel-exactly.

Modules (import them directly; this package imports nothing heavy):

* `samri.dicomweb.orthanc`: find Debian's ``Orthanc`` + DICOMweb plugin, run it loopback-only.
* `samri.dicomweb.convert`: NIfTI volume -> DICOM MR Image Storage datasets (one per slice).
* `samri.dicomweb.series`: DICOM MR series -> validated volume on its RAS grid (the reverse).
* `samri.dicomweb.upload`: STOW-RS upload of a series, QIDO look-ups.
* `samri.dicomweb.seg`: label volume <-> DICOM SEG referencing its source series.
* `samri.testing.netaudit`: record any non-loopback connection a Python subprocess attempts.
* `samri.dicomweb.cli`: the ``samri dicom ...`` subcommands (``orthanc``, ``upload``,
  ``upload-samples``, ``serve``).

Frames: NIfTI arrays are ``(X, Y, Z)`` with a voxel-to-RAS affine (as everywhere in `samri`);
DICOM positions and orientations are in LPS millimetres. ``RAS = diag(-1, -1, 1) @ LPS``.
"""
