"""The per-file-version volume cache (`lib.runtime.volumes`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.errors import SamriInputError


def test_volume_store_caches_per_file_version(tmp_path: Path) -> None:
    import os

    from apps.samri.lib.runtime.volumes import VolumeStore
    from samri.intensity import WindowSettings

    store = VolumeStore(window=WindowSettings(), max_items=2)
    paths = []
    for n in range(3):
        path = tmp_path / f"v{n}.nii.gz"
        nib.save(nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5) + n, np.eye(4)), str(path))
        paths.append(path)
    first = store.get(paths[0])
    assert store.get(paths[0]) is first and store.stats == {"hits": 1, "loads": 1}
    nib.save(nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5) * 2, np.eye(4)), str(paths[0]))
    os.utime(paths[0], ns=(1, 1))  # a new version even within one mtime tick
    assert store.get(paths[0]).content_key != first.content_key
    store.get(paths[1])
    store.get(paths[2])
    assert len(store._items) == 2
    with pytest.raises(SamriInputError) as missing:
        store.get(tmp_path / "gone.nii.gz", "file")
    assert missing.value.field == "file"
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(SamriInputError, match="cannot be read"):
        store.get(tmp_path / "corrupt.nii.gz")
