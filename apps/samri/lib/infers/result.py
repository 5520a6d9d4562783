"""Write a result mask on the image's own grid, in the format the client asked for.

NRRD is written here rather than through pynrrd's writer because every click pays for it: the
result is a whole ``(X, Y, Z)`` volume in which a 2D answer fills one k slice, and gzipping 7 MB
of zeros (pynrrd, zlib level 1) took ~11 ms of a ~65 ms click, the Fortran-order copy and the scan
for filled slices ~6 ms more. The gzip stream is assembled per k slice instead: an empty slice is
one precompressed, self-contained deflate block (full flush: no back-references across it), so only
filled slices are compressed; the CRC-32 over all bytes is what remains (~2 ms). The header is the
one pynrrd writes (LPS ``space directions`` / ``space origin`` from the image's RAS affine, pynrrd's
number formatting), and pynrrd, ITK and Slicer read the file as any gzip NRRD. NIfTI goes through
`samri.volume.save_label`. The MONAI Label endpoint deletes the file after sending it.
"""

from __future__ import annotations

import functools
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

#: RAS -> LPS (flip the first two world axes).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown (RFC 1952).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: zlib level of the filled slices (level 1: the fastest; labels compress well at any level).
COMPRESSION_LEVEL = 1


def nrrd_header(affine: np.ndarray, *, compress: bool) -> dict:
    """pynrrd header for an ``(X, Y, Z)`` array whose voxel-to-RAS matrix is ``affine`` (4x4).

    ``space directions`` rows are the LPS world vectors of the array's axes 0, 1, 2 (one voxel step
    each); ``space origin`` is voxel (0, 0, 0) in LPS mm.
    """
    affine = np.asarray(affine, dtype=np.float64)
    return {"space": "left-posterior-superior",
            "space directions": (_RAS_TO_LPS @ affine[:3, :3]).T,
            "space origin": _RAS_TO_LPS @ affine[:3, 3],
            "kinds": ["domain", "domain", "domain"],
            "encoding": "gzip" if compress else "raw"}


def nrrd_header_text(shape: tuple[int, int, int], affine: np.ndarray, *, compress: bool) -> bytes:
    """The NRRD header (up to and including the blank line) of a uint8 ``shape`` volume on ``affine``."""
    import nrrd

    fields = nrrd_header(affine, compress=compress)
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html", "type: uint8", "dimension: 3",
             f"space: {fields['space']}", "sizes: " + " ".join(str(int(s)) for s in shape),
             f"space directions: {nrrd.format_optional_matrix(fields['space directions'])}",
             f"kinds: {' '.join(fields['kinds'])}", f"encoding: {fields['encoding']}",
             f"space origin: {nrrd.format_vector(fields['space origin'])}"]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def filled_slices(mask: np.ndarray) -> np.ndarray:
    """Ascending k indices of the non-empty ``mask[:, :, k]`` of an ``(X, Y, Z)`` C-ordered mask."""
    columns = np.ascontiguousarray(mask).reshape(-1, mask.shape[2])  # C order: k is the fastest axis
    return np.flatnonzero(np.bitwise_or.reduce(columns, axis=0))  # ~1 ms for 7 MB; np.nonzero: ~14


def fortran_slices(mask: np.ndarray) -> Iterator[bytes | None]:
    """Per k slice, in order: its bytes in NRRD's order (i fastest, then j), or None when empty."""
    mask = np.asarray(mask).astype(np.uint8, copy=False)
    filled = set(filled_slices(mask).tolist())
    for k in range(mask.shape[2]):
        yield np.ascontiguousarray(mask[:, :, k].T).tobytes() if k in filled else None


@functools.lru_cache(maxsize=8)
def _empty_slice_deflate(n_bytes: int) -> bytes:
    """A self-contained raw-deflate run of ``n_bytes`` zeros ending on a full flush."""
    compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(bytes(n_bytes)) + compressor.flush(zlib.Z_FULL_FLUSH)


def write_gzip_slices(stream: BinaryIO, slices: Iterable[bytes | None], slice_bytes: int) -> None:
    """Write one gzip member (RFC 1952) of the concatenated ``slices`` (None = ``slice_bytes`` zeros).

    Each filled slice is compressed and ends on a full flush (byte-aligned, no reference back), so
    the shared block of an empty slice can sit between any two of them in one valid deflate stream.
    """
    empty_block = _empty_slice_deflate(slice_bytes)
    zeros = bytes(slice_bytes)
    compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc, size = 0, 0
    stream.write(_GZIP_HEADER)
    for data in slices:
        if data is None:
            stream.write(empty_block)
            crc = zlib.crc32(zeros, crc)
        else:
            stream.write(compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH))
            crc = zlib.crc32(data, crc)
        size += slice_bytes
    stream.write(compressor.flush(zlib.Z_FINISH))
    stream.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def write_nrrd_label(path: str | os.PathLike, mask: np.ndarray, affine: np.ndarray, *, compress: bool = True) -> None:
    """Write the ``(X, Y, Z)`` mask (cast to uint8) as NRRD on ``affine``'s grid (gzip or raw data)."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask shape {mask.shape}: expected (X, Y, Z)")
    slice_bytes = int(mask.shape[0] * mask.shape[1])
    with open(path, "wb") as stream:
        stream.write(nrrd_header_text(mask.shape, affine, compress=compress))
        if compress:
            write_gzip_slices(stream, fortran_slices(mask), slice_bytes)
        else:
            zeros = bytes(slice_bytes)
            for data in fortran_slices(mask):
                stream.write(zeros if data is None else data)


def write_result(mask: np.ndarray, affine: np.ndarray, *, extension: str = ".nrrd", compress: bool = True,
                 directory: str | os.PathLike | None = None) -> Path:
    """Write ``mask`` (``(X, Y, Z)``, cast to uint8) to a new temporary file and return its path.

    Args:
        mask: the label volume on the image grid (array axes = the image's voxel axes i, j, k).
        affine: the image's ``(4, 4)`` voxel-to-RAS matrix.
        extension: ``.nrrd``, ``.nii.gz`` or ``.nii``.
        compress: gzip NRRD data; NIfTI compression follows the extension.
    """
    fd, name = tempfile.mkstemp(prefix="samri_", suffix=extension, dir=directory)
    os.close(fd)
    path = Path(name)
    try:
        if extension == ".nrrd":
            write_nrrd_label(path, mask, affine, compress=compress)
        else:
            from samri.volume import save_label

            save_label(path, np.asarray(mask, dtype=np.uint8), affine)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
