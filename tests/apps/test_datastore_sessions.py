"""`SamriSessions`: archive members that would land outside their folder refuse the whole archive."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from fastapi import HTTPException

from apps.samri.lib.datastore.sessions import SamriSessions


def _status(call) -> int:
    with pytest.raises(HTTPException) as err:
        call()
    return err.value.status_code


def tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    """A gzipped tar at ``path`` with ``members`` as given (regular files hold ``size`` bytes of ``x``)."""
    with tarfile.open(path, "w:gz") as archive:
        for info in members:
            data = b"x" * info.size if info.isreg() else None
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    """A tar member header: a 4-byte regular file by default, else ``kind`` (link to ``target``, device, ...)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, 4 if kind == tarfile.REGTYPE else 0
    return info


def test_tar_slip_is_refused_and_nothing_is_extracted(tmp_path: Path) -> None:
    outside, store_path = tmp_path / "outside", tmp_path / "sessions"
    outside.mkdir()
    sessions = SamriSessions(str(store_path), 3600)
    bad = {"dotdot": [member("ok.txt"), member("../outside/evil.txt")], "absolute": [member(str(outside / "e"))],
           "symlink": [member("link", tarfile.SYMTYPE, str(outside)), member("link/evil.txt")],
           "hardlink": [member("h", tarfile.LNKTYPE, "/etc/passwd")], "device": [member("dev", tarfile.CHRTYPE)],
           "fifo": [member("fifo", tarfile.FIFOTYPE)], "setuid": [member("suid")]}
    bad["setuid"][0].mode = 0o4755
    for kind, members in bad.items():
        archive = tar(tmp_path / f"{kind}.tar.gz", members)
        with pytest.raises(HTTPException) as err:
            sessions.add_session(str(archive), uncompress=True)
        assert err.value.status_code == 422 and "member" in err.value.detail, kind
    zipped = tmp_path / "slip.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("../outside/evil.txt", "x")
    assert _status(lambda: sessions.add_session(str(zipped), uncompress=True)) == 422
    not_archive = tmp_path / "image.nii.gz"
    not_archive.write_bytes(b"x")
    assert _status(lambda: sessions.add_session(str(not_archive), uncompress=True)) == 422
    assert list(outside.iterdir()) == [] and not store_path.exists()
    good = tar(tmp_path / "good.tar.gz", [member("series/a.dcm")])
    session_id, info = sessions.add_session(str(good), uncompress=True)
    assert Path(info.image, "series", "a.dcm").read_bytes() == b"xxxx"
    assert sessions.get_session("../" + session_id) is None and sessions.get_session(session_id) is not None


def test_archives_over_the_limits_are_413(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from apps.samri.lib.datastore import sessions as module

    monkeypatch.setattr(module, "MAX_MEMBERS", 2)
    archive = tar(tmp_path / "many.tar.gz", [member(f"f{n}") for n in range(3)])
    sessions = SamriSessions(str(tmp_path / "sessions"), 3600)
    assert _status(lambda: sessions.add_session(str(archive), uncompress=True)) == 413
    assert not (tmp_path / "sessions").exists()
