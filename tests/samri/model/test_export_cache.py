"""samri.model.export_cache: keyed folders, published atomically, verified before use (no runtime needed)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from samri.model.export_cache import (
    EXPORT_FORMAT,
    KEEP_PER_PART,
    MANIFEST,
    ExportKey,
    check_export,
    default_export_dir,
    export_folder,
    read_manifest,
)

KEY = ExportKey(part="encoder", fingerprint="abc123", backend="openvino",
                runtime_version="2026.4.1-22982-e213a147257-releases/2026/4")


class Builder:
    """A ``build`` that writes two files and counts its calls."""

    def __init__(self, payload: bytes = b"weights" * 100, fail: bool = False) -> None:
        self.calls = 0
        self.payload = payload
        self.fail = fail

    def __call__(self, staging: Path) -> dict:
        self.calls += 1
        (staging / "model.xml").write_text("<net/>")
        (staging / "model.bin").write_bytes(self.payload)
        if self.fail:
            raise RuntimeError("conversion failed")
        return {"checks": {"fp32": {"cosine": 1.0}}}


def test_folder_name_has_part_fingerprint_backend_version_and_format():
    name = KEY.folder_name()
    assert name.startswith("encoder-abc123-openvino-ov2026.4.1-") and name.endswith(f"-f{EXPORT_FORMAT}")
    assert "/" not in name
    other = ExportKey(**{**KEY.to_dict(), "runtime_version": "2026.4.1-other-build"})
    assert other.folder_name() != name  # same release number, other build: another folder


def test_export_is_built_once_then_served_from_disk(tmp_path):
    build = Builder()
    folder = export_folder(tmp_path, KEY, build)
    assert folder == tmp_path / KEY.folder_name() and build.calls == 1
    manifest = read_manifest(folder)
    assert manifest["key"] == KEY.to_dict() and set(manifest["files"]) == {"model.xml", "model.bin"}
    assert manifest["checks"]["fp32"]["cosine"] == 1.0
    assert export_folder(tmp_path, KEY, build) == folder and build.calls == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or trash left


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_bin", "manifest_garbage", "no_manifest",
                                    "other_key"])
def test_corrupt_or_stale_export_is_rebuilt_never_served(tmp_path, damage):
    build = Builder()
    folder = export_folder(tmp_path, KEY, build)
    weights = folder / "model.bin"
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-5])
    elif damage == "delete_bin":
        weights.unlink()
    elif damage == "manifest_garbage":
        (folder / MANIFEST).write_text("{not json")
    elif damage == "no_manifest":
        (folder / MANIFEST).unlink()
    else:
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["key"]["export_format"] = EXPORT_FORMAT - 1
        (folder / MANIFEST).write_text(json.dumps(manifest))
    assert check_export(folder, KEY) is not None
    assert export_folder(tmp_path, KEY, build) == folder and build.calls == 2
    assert check_export(folder, KEY) is None and weights.read_bytes() == build.payload


def test_failed_build_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="conversion failed"):
        export_folder(tmp_path, KEY, Builder(fail=True))
    assert list(tmp_path.iterdir()) == []


def test_concurrent_exports_of_one_key_agree(tmp_path):
    build = Builder()
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(export_folder(tmp_path, KEY, build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 1 and build.calls == 1 and check_export(out[0], KEY) is None


def test_old_exports_of_a_part_are_pruned(tmp_path):
    keys = [ExportKey(**{**KEY.to_dict(), "fingerprint": f"w{i}"}) for i in range(6)]
    decoder = ExportKey(**{**KEY.to_dict(), "part": "decoder"})
    export_folder(tmp_path, decoder, Builder())
    for key in keys:
        export_folder(tmp_path, key, Builder())
    left = sorted(p.name.split("-")[1] for p in tmp_path.iterdir() if p.name.startswith("encoder-"))
    assert len(left) == KEEP_PER_PART and keys[-1].fingerprint in left  # the newest stay
    assert (tmp_path / decoder.folder_name()).is_dir()  # another part is not touched


def test_pruning_keeps_to_one_lineage(tmp_path):
    """Exports of another registry model (a random-weights SAM ViT benchmark) never push out the served
    model's; a folder written before lineages competes with every lineage, so none is kept forever."""
    served = ExportKey(**{**KEY.to_dict(), "fingerprint": "served"})
    export_folder(tmp_path, served, Builder(), lineage="samri_lite")
    legacy = ExportKey(**{**KEY.to_dict(), "fingerprint": "legacy"})
    export_folder(tmp_path, legacy, Builder())
    assert json.loads((tmp_path / legacy.folder_name() / "manifest.json").read_text())["lineage"] == ""
    others = [ExportKey(**{**KEY.to_dict(), "fingerprint": f"vit{i}"}) for i in range(KEEP_PER_PART + 2)]
    for key in others:
        export_folder(tmp_path, key, Builder(), lineage="sam_vit_l")
    left = {p.name.split("-")[1] for p in tmp_path.iterdir() if p.name.startswith("encoder-")}
    assert "served" in left and "legacy" not in left
    assert {k.fingerprint for k in others[-KEEP_PER_PART:]} <= left and len(left) == KEEP_PER_PART + 1
    assert json.loads((tmp_path / served.folder_name() / "manifest.json").read_text())["lineage"] == "samri_lite"


def test_default_export_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMRI_BACKEND_CACHE", str(tmp_path / "x"))
    assert default_export_dir() == tmp_path / "x"
    monkeypatch.delenv("SAMRI_BACKEND_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_export_dir() == tmp_path / "samri" / "backends"
