"""``samri dicom ...``: run Orthanc, convert + upload NIfTI volumes, serve the app over DICOMweb.

    samri dicom orthanc --storage data/orthanc --port 8042          # foreground, Ctrl+C stops it
    samri dicom upload img.nii.gz --url http://127.0.0.1:8042/dicom-web
    samri dicom upload-samples --url http://127.0.0.1:8042/dicom-web --studies data/studies [--labels]
    samri dicom serve --storage data/orthanc --studies data/studies   # Orthanc + MONAI Label (make run-ohif)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)


def _seed(path: Path) -> str:
    """UID seed of a file: its name and size, so uploading the same file again is a no-op."""
    from samri.errors import SamriInputError

    if not path.is_file():
        raise SamriInputError("image", str(path), "file not found")
    return f"samri:{path.name}:{path.stat().st_size}"


def upload_images(images: Sequence[Path], url: str, *, patient_id: str | None = None, study_uid: str | None = None,
                  deterministic: bool = True, skip_existing: bool = True) -> list[str]:
    """Convert and STOW each image; returns their SeriesInstanceUIDs (existing series are skipped,
    unless stored with other InstanceNumbers: a series from before InstanceNumber ran against the slice
    normal, which OHIF's SEG export mirrors, is sent again and replaces those instances)."""
    from samri.dicomweb.convert import nifti_to_dicom_series
    from samri.dicomweb.upload import search_series, stored_instance_numbers, upload_series

    uids = []
    for n, image in enumerate(images):
        datasets = nifti_to_dicom_series(image, patient_id=patient_id, study_uid=study_uid,
                                         uid_seed=_seed(Path(image)) if deterministic else None, series_number=n + 1)
        uid = str(datasets[0].SeriesInstanceUID)
        wanted = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in datasets}
        if skip_existing and search_series(url, SeriesInstanceUID=uid) \
                and stored_instance_numbers(url, uid) == wanted:
            logger.info("%s already on %s as series %s", image, url, uid)
        else:
            upload_series(datasets, url)
        uids.append(uid)
    return uids


def upload_sample_studies(studies: Path, url: str, *, labels: bool = False) -> dict[str, str]:
    """Upload every ``*.nii.gz`` in ``studies`` (and with ``labels`` its ``labels/final`` as SEG,
    segment names from ``label_names.json``); returns ``{file stem: series uid}``."""
    from samri.dicomweb.convert import nifti_to_dicom_series
    from samri.errors import SamriInputError

    images = sorted(p for p in Path(studies).glob("*.nii.gz") if p.is_file())
    if not images:
        raise SamriInputError("studies", str(studies), "holds no *.nii.gz volume (run `samri sample-data` first)")
    uids = dict(zip((p.name.split(".")[0] for p in images), upload_images(images, url)))
    if labels:
        from samri.dicomweb.seg import label_to_seg
        from samri.dicomweb.upload import search_series, store_datasets
        from samri.labels import load_label_names
        from samri.volume import load_image

        names = load_label_names(studies)
        existing = {item.get("0020000E", {}).get("Value", [""])[0] for item in search_series(url, Modality="SEG")}
        for image in images:
            stem = image.name.split(".")[0]
            label_path = Path(studies) / "labels" / "final" / image.name
            if not label_path.is_file():
                continue
            source = nifti_to_dicom_series(image, uid_seed=_seed(image))
            from samri.dicomweb.convert import make_uid

            seg_uid = make_uid(_seed(label_path), "seg", uids[stem])
            if seg_uid in existing:
                continue
            seg, _ = label_to_seg(load_image(label_path, "label").array, source, series_uid=seg_uid,
                                  names={v: k for k, v in names.get(stem, {}).items()},
                                  series_description=f"{stem} reference labels")
            store_datasets([seg], url, series_uid=seg_uid)
            logger.info("uploaded %s as SEG %s", label_path, seg_uid)
    return uids


def cmd_orthanc(args: argparse.Namespace) -> int:
    from samri.dicomweb.orthanc import running_orthanc

    with running_orthanc(args.storage, http_port=args.port) as orthanc:
        print(f"Orthanc: {orthanc.url} (DICOMweb {orthanc.dicomweb_root}), storage {orthanc.storage_dir}, "
              f"log {orthanc.log_path}; Ctrl+C stops it", flush=True)
        _wait_for_signal(orthanc.process)
    return 0


def _wait_for_signal(process: subprocess.Popen) -> int | None:
    """Wait for ``process`` to end; SIGINT/SIGTERM end the wait (the caller then cleans up)."""
    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return None


def cmd_upload(args: argparse.Namespace) -> int:
    for image, uid in zip(args.images, upload_images(args.images, args.url, patient_id=args.patient_id,
                                                     study_uid=args.study_uid, deterministic=not args.new_uids)):
        print(f"{image}\t{uid}")
    return 0


def cmd_upload_samples(args: argparse.Namespace) -> int:
    for stem, uid in upload_sample_studies(args.studies, args.url, labels=args.labels).items():
        print(f"{stem}\t{uid}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Orthanc, the sample studies in it, then ``monailabel start_server --studies <DICOMweb root>``."""
    from samri.dicomweb.orthanc import running_orthanc

    with running_orthanc(args.storage, http_port=args.orthanc_port) as orthanc:
        if args.studies and Path(args.studies).is_dir():
            upload_sample_studies(Path(args.studies), orthanc.dicomweb_root, labels=args.labels)
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(args.app),
               "--studies", orthanc.dicomweb_root, "--host", args.host, "--port", str(args.port),
               "--conf", "dicomweb_cache", str(Path(args.storage).resolve() / "monailabel_cache")]
        for key, value in args.conf or []:
            cmd += ["--conf", key, value]
        env = {**os.environ}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        print(f"Orthanc DICOMweb: {orthanc.dicomweb_root}\nOHIF: http://{args.host}:{args.port}/ohif/\n"
              f"starting: {' '.join(cmd)}", flush=True)
        server = subprocess.Popen(cmd, env=env)
        code = _wait_for_signal(server)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        return int(code or 0)


def _guard(func):
    """Server-side failures (Orthanc missing or unreachable) exit with status 1 and one line, no traceback."""
    from samri.dicomweb.upload import DicomWebError

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (DicomWebError, RuntimeError) as exc:
            print(f"samri dicom {args.dicom_command}: error: {exc}", file=sys.stderr)
            return 1

    return run


def add_dicom_parser(sub) -> None:
    """Register ``samri dicom`` and its subcommands on the main parser's subparsers."""
    p = sub.add_parser("dicom", help="Orthanc/DICOMweb: run Orthanc, upload NIfTI as DICOM MR, serve for OHIF")
    dsub = p.add_subparsers(dest="dicom_command", required=True)

    q = dsub.add_parser("orthanc", help="run Debian's Orthanc (loopback only) in the foreground")
    q.add_argument("--storage", type=Path, default=Path("data/orthanc"), help="Orthanc's storage folder")
    q.add_argument("--port", type=int, default=8042)
    q.set_defaults(func=_guard(cmd_orthanc))

    q = dsub.add_parser("upload", help="convert NIfTI/NRRD volumes to DICOM MR series and STOW them")
    q.add_argument("images", nargs="+", type=Path)
    q.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    q.add_argument("--patient-id", default=None)
    q.add_argument("--study-uid", default=None, help="put all series into this study")
    q.add_argument("--new-uids", action="store_true", help="random UIDs (default: derived from the file)")
    q.set_defaults(func=_guard(cmd_upload))

    q = dsub.add_parser("upload-samples", help="upload a studies folder (samri sample-data) to DICOMweb")
    q.add_argument("--url", required=True)
    q.add_argument("--studies", type=Path, default=Path("data/studies"))
    q.add_argument("--labels", action="store_true", help="also upload labels/final as DICOM SEG")
    q.set_defaults(func=_guard(cmd_upload_samples))

    q = dsub.add_parser("serve", help="Orthanc + sample studies + the MONAI Label server for OHIF")
    q.add_argument("--storage", type=Path, default=Path("data/orthanc"))
    q.add_argument("--orthanc-port", type=int, default=8042)
    q.add_argument("--studies", type=Path, default=Path("data/studies"), help="NIfTI studies to upload first")
    q.add_argument("--labels", action="store_true", help="also upload their labels/final as DICOM SEG")
    q.add_argument("--app", type=Path, default=Path("apps/samri"))
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help="app --conf pairs")
    q.set_defaults(func=_guard(cmd_serve))
