"""samri.io: atomic writes (never half-written, temp removed, suffix and mode kept) and file signatures."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from samri.io import (
    FileSignature,
    atomic_path,
    atomic_write,
    copy_file,
    file_mode,
    file_signature,
    format_suffix,
    move_file,
    signature_text,
    temp_file,
    write_bytes,
    write_json,
    write_text,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_and_sets_the_normal_mode(tmp_path):
    target = tmp_path / "deep" / "x.bin"
    assert atomic_write(target, lambda f: f.write(b"abc")) == target
    assert target.read_bytes() == b"abc"
    assert _mode(target) == file_mode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


def test_writer_that_raises_leaves_the_old_file_and_no_temp(tmp_path):
    target = write_text(tmp_path / "a.json", "old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_interrupt_is_cleaned_up_too(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_format_suffix(tmp_path):
    with atomic_path(tmp_path / "1.2.840.nii.gz") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".1.2.840.nii.gz.tmp-")
        assert tmp.exists()
        tmp.write_bytes(b"x")
    assert (tmp_path / "1.2.840.nii.gz").read_bytes() == b"x"
    assert format_suffix("v0001.pt") == ".pt"
    assert format_suffix("a.nii.gz") == ".nii.gz"
    assert format_suffix("table.csv.GZ") == ".csv.GZ"
    assert format_suffix("README") == ""


def test_file_object_writes_stage_under_a_part_name(tmp_path):
    """A hidden ``*.nii.gz`` temp would be listed by MONAI Label's fnmatch scan: these end in ``.part``."""
    seen = []

    def write(f):
        seen.append(Path(f.name).name)
        f.write(b"x")

    atomic_write(tmp_path / "s1.nii.gz", write)
    assert seen[0].startswith(".s1.nii.gz.tmp-") and seen[0].endswith(".part")


def test_atomic_path_mode_follows_file_mode_even_if_the_writer_recreates_the_file(tmp_path):
    with atomic_path(tmp_path / "x.txt") as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    assert _mode(tmp_path / "x.txt") == file_mode()


def test_tmp_dir_stages_elsewhere(tmp_path):
    staging, target = tmp_path / "staging", tmp_path / "studies" / "img.nii.gz"
    with atomic_path(target, tmp_dir=staging) as tmp:
        assert tmp.parent == staging
        assert not target.parent.joinpath(tmp.name).exists()
        tmp.write_bytes(b"v")
    assert target.read_bytes() == b"v"
    assert list(staging.iterdir()) == []


def test_json_bytes_and_text_round_trip(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "é"}, "p": Path("x")}
    path = write_json(tmp_path / "o.json", obj)
    assert json.loads(path.read_text()) == {**obj, "p": "x"}
    assert path.read_text() == json.dumps(obj, indent=1, default=str)
    assert write_bytes(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_text(tmp_path / "t.md", "é\n").read_text(encoding="utf-8") == "é\n"
    assert atomic_write(tmp_path / "t2", lambda f: f.write("é"), binary=False).read_text(encoding="utf-8") == "é"


def test_copy_move_and_temp_file(tmp_path):
    src = write_bytes(tmp_path / "src.bin", b"data")
    os.chmod(src, 0o640)
    copied = copy_file(src, tmp_path / "out" / "c.bin")
    assert copied.read_bytes() == b"data" and _mode(copied) == file_mode()
    assert _mode(copy_file(src, tmp_path / "m.bin", mode=0o640)) == 0o640
    moved = move_file(src, tmp_path / "sub" / "moved.bin")
    assert moved.read_bytes() == b"data" and not src.exists()
    staged = temp_file(tmp_path / "stage", prefix="upload-", suffix=".nii.gz")
    assert staged.name.startswith("upload-") and staged.name.endswith(".nii.gz")
    assert staged.read_bytes() == b"" and _mode(staged) == file_mode()


def test_file_signature_changes_on_rewrite_and_is_none_when_missing(tmp_path):
    path = tmp_path / "live.json"
    assert file_signature(None) is None
    assert file_signature("") is None
    assert file_signature(path) is None
    write_text(path, "a")
    first = file_signature(path)
    assert isinstance(first, FileSignature)
    assert first == file_signature(path)
    assert first.size == 1 and first.path == str(path)
    assert first.text == f"{first.mtime_ns}:{first.size}" == str(first)
    write_text(path, "b")  # same size, maybe the same mtime: the new inode still tells
    assert file_signature(path) != first
    hash(first)  # usable as a cache key
    assert signature_text(path) == file_signature(path).text
    assert signature_text(tmp_path / "missing") is None and signature_text(None) is None


def test_import_is_light():
    code = "import samri.io, sys; print('torch' in sys.modules, 'nibabel' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
