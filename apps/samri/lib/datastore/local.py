"""SAMRI's local datastore: MONAI Label's ``LocalDatastore`` that checks what clients send and keeps old labels.

MONAI Label 0.8.5's ``LocalDatastore`` joins client ids and tags into paths unchecked (``tag=../../x``
writes outside the studies folder, ``image=../code/evil`` with a ``.py`` upload too), stores any
uploaded file as a label, and overwrites the previous label. This subclass keeps its layout and
listing (``<studies>/<id><ext>`` images, ``<studies>/labels/<tag>/<id><ext>`` labels,
``datastore_v2.json``) and changes only what the endpoints reach:

* ids and tags are single safe names (`names.check_name`: no ``/``, ``\\``, ``%2F``, ``..``, NUL,
  leading dot, ...), checked before any file access; nothing is written or deleted through a
  folder that resolves outside the studies folder, and a symlinked file is unlinked, never followed;
* image uploads: an extension of `labelcheck.VOLUME_EXTENSIONS` that the datastore also lists, a
  file that reads as a 3D volume, at most `labelcheck.MAX_IMAGE_VOXELS` (413); re-uploading an id
  keeps its labels, and is refused (409) if labels exist and the new image is on another grid;
* labels are checked against their image (`labelcheck.check_label_file`); float labels with
  integral values, and labels whose file declares no geometry, are stored as ``.nii.gz`` on the
  image's affine; other labels are stored byte for byte;
* a label that is replaced or removed is first kept in the history (`history`), where MONAI
  Label's scans never look; `SamriLocalDatastore.restore_label` brings a version back;
* every write goes to ``<studies>/.samri/tmp`` first and is renamed into place (``os.replace``),
  and every change of ``datastore_v2.json`` first reloads it under the lock, so a scoring or
  training subprocess writing image info never drops a label another process just registered;
* unknown ids answer 404 (also image info, label info, label deletion), bad values 422.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag

from samri.errors import SamriInputError
from samri.io import move_file, temp_file

from .history import LabelVersion, clean_staging, keep_version, list_versions, staging_folder
from .labelcheck import (
    TooLarge,
    allowed_extensions,
    check_image_file,
    check_label_file,
    check_on_grid,
    read_grid,
    volume_extension,
)
from .names import check_inside, check_name, name_problem

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value


class UnknownItem(SamriInputError):
    """An image id or label the datastore does not hold (HTTP 404)."""


class Conflict(SamriInputError):
    """A request that would make stored labels wrong (HTTP 409)."""


@contextmanager
def http_errors(action: str) -> Iterator[None]:
    """Re-raise datastore refusals as `fastapi.HTTPException`: 404 unknown, 409, 413, 422."""
    try:
        yield
    except HTTPException:
        raise
    except SamriInputError as exc:
        status = 404 if isinstance(exc, UnknownItem) else 409 if isinstance(exc, Conflict) \
            else 413 if isinstance(exc, TooLarge) else 422
        logger.warning("%s: refused (%d): %s", action, status, exc)
        raise HTTPException(status_code=status, detail=f"{action}: {exc}") from exc


class SamriLocalDatastore(LocalDatastore):
    """A studies folder as MONAI Label datastore; same constructor as ``LocalDatastore``.

    Args:
        datastore_path: the studies folder (``--studies``).
        extensions: file patterns listed as images and labels (``MONAI_LABEL_DATASTORE_FILE_EXT``);
            uploads are accepted for those of them that are volume formats SAMRI reads.
        images_dir, labels_dir, datastore_config, auto_reload, read_only: as ``LocalDatastore``.
    """

    def __init__(self, datastore_path: str, images_dir: str = ".", labels_dir: str = "labels",
                 datastore_config: str = "datastore_v2.json", extensions=("*.nii.gz", "*.nii"),
                 auto_reload: bool = False, read_only: bool = False) -> None:
        self._warned: set[str] = set()
        super().__init__(datastore_path, images_dir=images_dir, labels_dir=labels_dir,
                         datastore_config=datastore_config, extensions=extensions, auto_reload=auto_reload,
                         read_only=read_only)
        self._volume_exts = allowed_extensions(self._extensions)
        clean_staging(self.root)
        if not self._volume_exts:
            logger.warning("datastore extensions %s hold no volume format: uploads will be refused", self._extensions)

    # --- names and lookups ------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The studies folder."""
        return Path(self._datastore_path)

    def _all_exts(self) -> list[str]:
        return [e.replace("*", "") for e in self._extensions]

    def _image(self, image_id: Any, field: str = "image") -> ImageLabelModel:
        """The stored object of a checked id, or `UnknownItem`."""
        check_name(field, image_id)
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise UnknownItem(field, image_id, "not found in the datastore (see GET /datastore/)")
        return obj

    def _label(self, image_id: Any, tag: Any, field: str = "label") -> DataModel:
        check_name("tag", tag)
        label = self._image(image_id, field).labels.get(tag)
        if label is None:
            raise UnknownItem(field, image_id, f"has no label with tag {tag!r}")
        return label

    def _image_path(self, image_id: str, ext: str) -> Path:
        return check_inside("image", image_id, self.root, Path(self._datastore.image_path()) / f"{image_id}{ext}")

    def _label_path(self, tag: str, image_id: str, ext: str) -> Path:
        return check_inside("tag", tag, self.root, Path(self._datastore.label_path(tag)) / f"{image_id}{ext}")

    def _files_of(self, folder: Path, image_id: str) -> list[Path]:
        """Files (or links) named ``<image_id><ext>`` in ``folder`` for every listed extension."""
        return [p for p in (folder / f"{image_id}{e}" for e in self._all_exts()) if p.is_file() or p.is_symlink()]

    def _list_files(self, path, patterns):
        """LocalDatastore's scan without hidden or unsafe names (never reachable by a client) and folders."""
        found = super()._list_files(path, patterns)
        kept = {}
        for key, name in found.items():
            problem = name_problem(self._to_id(name)[0])
            if problem or not os.path.isfile(os.path.join(path, name)):
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning("datastore: ignoring %s (%s)", os.path.join(path, name), problem or "not a file")
                continue
            kept[key] = name
        return kept

    # --- locking and atomic file moves ------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The datastore lock, with the model reloaded from ``datastore_v2.json`` if another process changed it."""
        with FileLock(self._lock_file):
            path = self._datastore_config_path
            ts = os.stat(path).st_mtime if os.path.exists(path) else None
            if ts is not None and ts != self._config_ts:
                with open(path) as fp:
                    model = LocalDatastoreModel.model_validate_json(fp.read())
                model.base_path = self._datastore_path
                self._datastore, self._config_ts = model, ts
            yield

    def _stage(self, source: str | os.PathLike, ext: str) -> Path:
        """Copy ``source`` into the staging folder (same file system as the studies)."""
        staged = temp_file(staging_folder(self.root), prefix="upload-", suffix=ext)
        try:
            shutil.copyfile(source, staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    def _stage_array(self, array, affine) -> Path:
        from samri.volume import save_label

        return save_label(temp_file(staging_folder(self.root), prefix="label-", suffix=".nii.gz"), array, affine)

    @staticmethod
    def _move_into(staged: Path, dest: Path) -> None:
        """Rename ``staged`` over ``dest``; across file systems, copy next to ``dest`` first."""
        move_file(staged, dest)

    # --- images -----------------------------------------------------------------------------------
    def get_image_uri(self, image_id: str) -> str:
        """Path of image ``image_id``; 404 for an unknown id (LocalDatastore answers ``""``)."""
        with http_errors("image"):
            self._image(image_id)
        return super().get_image_uri(image_id)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        with http_errors("image info"):
            self._image(image_id)
        return super().get_image_info(image_id)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with http_errors("update image info"):
            check_name("image", image_id)
            if not isinstance(info, Mapping):
                raise SamriInputError("info", info, "must be a JSON object")
            with self._locked():
                self._image(image_id).image.info.update(info)
                self._update_datastore_file(lock=False)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an uploaded volume as ``<studies>/<image_id><ext>`` (id from the file name if empty)."""
        with http_errors("add image"):
            ext = volume_extension("file", image_filename, self._volume_exts)
            image_id = image_id or os.path.basename(image_filename)[: -len(ext)]
            check_name("image", image_id)
            if self._to_id(f"{image_id}{ext}")[0] != image_id:  # the folder scan would read another id
                raise SamriInputError("image", image_id, "must not end with a file extension")
            if image_info is not None and not isinstance(image_info, Mapping):
                raise SamriInputError("params", image_info, "must be a JSON object")
            grid = check_image_file(image_filename, self._volume_exts)
            dest = self._image_path(image_id, ext)
            staged = self._stage(image_filename, ext)
            try:
                with self._locked():
                    self._place_image(image_id, ext, dest, staged, grid, dict(image_info or {}))
            finally:
                staged.unlink(missing_ok=True)
        logger.info("image %s added as %s", image_id, dest)
        return image_id

    def _place_image(self, image_id: str, ext: str, dest: Path, staged: Path, grid, info: dict[str, Any]) -> None:
        """Under the datastore lock: refuse a grid change under labels, rename, register (labels kept)."""
        obj = self._datastore.objects.get(image_id)
        if obj is not None and obj.labels:
            try:
                old = read_grid(Path(self._datastore.image_path()) / f"{image_id}{obj.image.ext}")
            except SamriInputError:
                old = None  # replacing an unreadable image cannot make its labels worse
            if old is not None:
                try:
                    check_on_grid(grid.shape, grid.affine, old, field="file")
                except SamriInputError as exc:
                    raise Conflict("image", image_id, f"has labels ({', '.join(sorted(obj.labels))}) on another "
                                   f"grid ({exc}); remove the image first or use another id") from exc
        self._move_into(staged, dest)
        for other in self._files_of(dest.parent, image_id):
            if other.name != dest.name:
                other.unlink()  # one file per id, as the folder scan expects
        info.update({"ts": int(time.time()), "name": dest.name})
        labels = dict(obj.labels) if obj is not None else {}
        self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext), labels=labels)
        self._update_datastore_file(lock=False)

    def remove_image(self, image_id: str) -> None:
        """Delete image ``image_id``; its labels are kept in the history first."""
        with http_errors("remove image"):
            with self._locked():
                obj = self._image(image_id, "id")
                path = self._image_path(image_id, obj.image.ext)
                for tag in obj.labels:  # every folder checked before anything is removed
                    self._label_path(tag, image_id, "")
                for tag in list(obj.labels):
                    self._retire_label(image_id, tag)
                if path.is_file() or path.is_symlink():
                    path.unlink()  # a link itself, never its target
                self._datastore.objects.pop(image_id, None)
                self._update_datastore_file(lock=False)
        logger.info("image %s removed (labels kept in the history)", image_id)

    # --- labels -----------------------------------------------------------------------------------
    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        with http_errors("label"):
            check_name("label", label_id)
            check_name("tag", label_tag)
        return super().get_label_uri(label_id, label_tag)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        with http_errors("label info"):
            self._label(label_id, label_tag)
        return super().get_label_info(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        with http_errors("update label info"):
            check_name("label", label_id)
            check_name("tag", label_tag)
            if not isinstance(info, Mapping):
                raise SamriInputError("info", info, "must be a JSON object")
            with self._locked():
                self._label(label_id, label_tag).info.update(info)
                self._update_datastore_file(lock=False)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Check ``label_filename`` against the image, keep the previous label, store it atomically."""
        tag = label_tag or FINAL
        with http_errors(f"save label of image {image_id!r}"):
            check_name("tag", tag)
            self._image(image_id)
            if label_info is not None and not isinstance(label_info, Mapping):
                raise SamriInputError("params", label_info, "must be a JSON object")
            image_path = super().get_image_uri(image_id)
            checked = check_label_file(label_filename, image_path, label_info, self._volume_exts)
            if checked.rewrite:
                ext, staged = ".nii.gz", self._stage_array(checked.array, read_grid(image_path).affine)
            else:
                ext = volume_extension("label", label_filename, self._volume_exts)
                staged = self._stage(label_filename, ext)
            try:
                with self._locked():
                    self._place_label(image_id, tag, ext, staged, dict(label_info or {}))
            finally:
                staged.unlink(missing_ok=True)
        logger.info("label %s/%s saved (values %s%s)", tag, image_id, list(checked.values)[:10],
                    ", rewritten on the image grid" if checked.rewrite else "")
        return image_id

    def _place_label(self, image_id: str, tag: str, ext: str, staged: Path, info: dict[str, Any]) -> None:
        """Under the datastore lock: keep every current file of the label, rename the new one in, register."""
        obj = self._image(image_id)  # removed meanwhile: 404
        dest = self._label_path(tag, image_id, ext)
        current = obj.labels.get(tag)
        old_files = self._files_of(dest.parent, image_id)
        for path in old_files:
            registered = current is not None and path.name == f"{image_id}{current.ext}"
            keep_version(self.root, tag, image_id, path, current.info if registered else {}, self._all_exts())
        self._move_into(staged, dest)
        for path in old_files:
            if path.name != dest.name:
                path.unlink()
        info.update({"ts": int(time.time()), "name": dest.name})
        obj.labels[tag] = DataModel(info=info, ext=ext)
        self._update_datastore_file(lock=False)

    def _retire_label(self, image_id: str, tag: str) -> None:
        """Under the datastore lock: keep the label's files in the history, then unlink and unregister."""
        obj = self._datastore.objects[image_id]
        label = obj.labels.get(tag)
        folder = self._label_path(tag, image_id, "").parent
        for path in self._files_of(folder, image_id):
            registered = label is not None and path.name == f"{image_id}{label.ext}"
            keep_version(self.root, tag, image_id, path, label.info if registered else {}, self._all_exts())
            path.unlink()
        obj.labels.pop(tag, None)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label (kept in the history); 404 when there is none."""
        with http_errors("remove label"):
            check_name("id", label_id)
            with self._locked():
                self._label(label_id, label_tag, "id")
                self._retire_label(label_id, label_tag)
                self._update_datastore_file(lock=False)
        logger.info("label %s/%s removed (kept in the history)", label_tag, label_id)

    # --- history ----------------------------------------------------------------------------------
    def label_versions(self, image_id: str, tag: str = FINAL) -> list[LabelVersion]:
        """Kept earlier versions of a label, oldest first (see `history`)."""
        check_name("image", image_id)
        check_name("tag", tag)
        return list_versions(self.root, tag, image_id, self._all_exts())

    def restore_label(self, image_id: str, tag: str = FINAL, stamp: str | None = None) -> str:
        """Make a kept version (``stamp``; default the newest) the current label again, checked as a new save.

        The label it replaces is kept in the history in turn. Returns the label id.
        """
        with http_errors(f"restore label of image {image_id!r}"):
            versions = self.label_versions(image_id, tag)
            chosen = [v for v in versions if stamp is None or v.stamp == stamp]
            if not chosen:
                raise UnknownItem("stamp", stamp, f"no kept version of label {tag}/{image_id}")
            version = chosen[-1]
        info = {k: v for k, v in version.info.items() if k not in ("ts", "name")}
        return self.save_label(image_id, str(version.path), tag, info)
