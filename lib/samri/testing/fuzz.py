"""A seeded generator of malformed requests against a SAMRI MONAI Label server (the fuzz suite).

Each `FuzzCase` is one HTTP request with what is wrong in it: ``fields`` names the fields it
corrupted, one of which a 4xx answer must name. Cases cover ``/infer`` (every request key x wrong
types, huge and negative numbers, out-of-grid points, roi lengths, swapped corners, unknown models
and images, traversal ids, non-object params, oversized params and point lists, corrupt uploads),
the datastore (invalid labels, traversal ids and tags, uploads with code extensions), sessions (tar
slip), active learning, training and scoring. No case is a valid write: after a run, the datastore
and everything outside it must be byte-identical (`tree_digest`).

Some ``/infer`` cases are valid after all (e.g. a swapped roi, a label name that is any string):
the server may answer them 200, and they are bounded in work (prompts on a few slices).

Standard library only; `samri.testing.fuzz_run` sends the cases (``python -m samri.testing.fuzz_run
--url URL --image ID --shape X Y Z --count N`` against a live server).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

#: an absolute archive member the tar-slip cases aim at (must never appear).
ABSOLUTE_TARGET = os.path.join(tempfile.gettempdir(), "samri-evil.txt")
#: values that are wrong for most keys (types, magnitudes, shapes).
WRONG_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1.5, float("nan"), 2**63, -(10**30), 10**400, "", "x", "../x", [], {}, [1, 2],
    [[1, 2]], [[1, 2, 3, 4]], [["a", "b", "c"]], [[None, 1, 2]], [[1.5, 2.5, 3.5]], [[-5, 0, 0]],
    [[10**6, 0, 0]], [[2**64, 2**64, 2**64]], {"a": 1}, [[[[1]]]],
)
#: request keys the app reads.
INFER_KEYS = ("foreground", "background", "roi", "slice", "label", "client_id", "reset_state", "result_extension",
              "result_dtype", "result_compress", "label_tag", "model")
BAD_IDS = ("../outside/x", "/etc/passwd", "..", "a/b", "a\\b", "%2e%2e%2fx", ".hidden", "x\x00y", "nope_unknown",
           "colin27_t1/../mni152_t1", " ", "a" * 400)
BAD_MODELS = ("nope", "SAMRI_2D", " samri_2d", "samri_2d ", "samri 2d", "samri_2d..", "..", "x%2F..%2Fy")
BAD_TAGS = ("../../outside/x", "/abs/tag", "a/b", "..", "%2e%2e", "final/../../x", "\x00", ".x")
NOT_OBJECTS = ("{", "abc", "{} x", "1", "\"s\"", "null", "true", "[1, 2]", "[[\"foreground\", [[1, 2, 3]]]]",
               "[" * 20000 + "]" * 20000, "{\"a\": " * 500 + "1" + "}" * 500)


@dataclass
class FuzzCase:
    """One malformed request.

    Attributes:
        name: family and variant, for reports.
        method: HTTP method.
        path: URL path (no host).
        query: query parameters.
        data: form fields.
        files: ``{field: (file name, bytes)}`` uploads.
        json_body: JSON body (POST routes that take ``params: dict``).
        fields: names of what was corrupted; a 4xx must name one of them (empty: any 4xx detail).
        may_succeed: the request might be valid after all (2xx allowed).
    """

    name: str
    method: str
    path: str
    query: dict[str, Any] = field(default_factory=dict)
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    json_body: Any = None
    fields: tuple[str, ...] = ()
    may_succeed: bool = False


@dataclass(frozen=True)
class Target:
    """What the generator knows about the server: one image id and its shape, and its slice to click."""

    image: str
    shape: tuple[int, int, int]

    @property
    def good_prompt(self) -> dict[str, Any]:
        """A valid, cheap 2D prompt: one point at the volume centre on the centre slice."""
        i, j, k = (s // 2 for s in self.shape)
        return {"foreground": [[i, j, k]], "slice": k, "result_extension": ".nrrd", "result_dtype": "uint8"}


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def nifti_bytes(shape: tuple[int, ...], dtype: str = "uint8", fill: float = 1, spacing: float = 1.0) -> bytes:
    """A minimal gzipped NIfTI-1 volume (header + data), written by hand so the generator needs no nibabel."""
    codes = {"uint8": (2, 8, "B"), "float32": (16, 32, "f"), "int16": (4, 16, "h")}
    code, bits, fmt = codes[dtype]
    dims = [len(shape)] + list(shape) + [1] * (7 - len(shape))
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hh", header, 70, code, bits)
    struct.pack_into("<8f", header, 76, 1.0, spacing, spacing, spacing, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<h", header, 254, 1)  # sform_code
    for row, values in enumerate(([spacing, 0, 0, 0], [0, spacing, 0, 0], [0, 0, spacing, 0])):
        struct.pack_into("<4f", header, 280 + 16 * row, *values)
    header[344:348] = b"n+1\x00"
    count = 1
    for s in shape:
        count *= s
    data = struct.pack(f"<{count}{fmt}", *([fill] * count))
    return gzip.compress(bytes(header) + b"\x00" * 4 + data, compresslevel=1)


def _tar_with(member: str, payload: bytes = b"evil") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _infer(target: Target, rng: random.Random, task: str | None = None, **overrides: Any) -> FuzzCase:
    """A good request to ``task`` (default: a random SAMRI model) with ``overrides`` in its params."""
    params = {**target.good_prompt, **overrides}
    model = task or rng.choice(("samri_2d", "samri_3d"))
    if model == "samri_3d" and "roi" not in overrides:
        i, j, k = (s // 2 for s in target.shape)
        params["roi"] = [i - 8, i + 8, j - 8, j + 8, k - 1, k + 1]  # keeps valid 3D requests to 3 slices
    return FuzzCase("infer", "POST", f"/infer/{model}", query={"image": target.image, "output": "image"},
                    data={"params": _dumps(params)})


def infer_cases(target: Target, rng: random.Random) -> Iterator[FuzzCase]:
    """Endless /infer cases, one family at a time in random order."""
    families: list[Callable[[], FuzzCase]] = []

    def wrong_value() -> FuzzCase:
        key, value = rng.choice(INFER_KEYS), rng.choice(WRONG_VALUES)
        extra = {"save_label": True} if key == "label_tag" else {}
        case = _infer(target, rng, **{key: value}, **extra)
        case.name, case.fields, case.may_succeed = f"infer:{key}", (key, "params", "label_tag"), True
        return case

    def bad_model() -> FuzzCase:
        case = _infer(target, rng, task="samri_2d")
        model = rng.choice(BAD_MODELS)
        case.path, case.name = f"/infer/{model}", "infer:model"
        # a dot segment is resolved by the client (/infer/.. is /): any 4xx then, or the docs page
        # the client resolves dot segments (/infer/.. is /) and the server decodes %2F before routing:
        # the route never sees such a name, so any 4xx (or the docs page) is right
        case.fields, case.may_succeed = ((), True) if model == ".." or "%2F" in model else (("model",), False)
        return case

    def bad_image() -> FuzzCase:
        case = _infer(target, rng)
        case.query["image"], case.name, case.fields = rng.choice(BAD_IDS), "infer:image", ("image",)
        return case

    def no_image() -> FuzzCase:
        case = _infer(target, rng)
        case.query.pop("image")
        case.name, case.fields = "infer:no-image", ("image",)
        return case

    def not_object() -> FuzzCase:
        case = _infer(target, rng)
        case.data = {"params": rng.choice(NOT_OBJECTS)}
        case.name, case.fields = "infer:params", ("params",)
        return case

    def bad_roi() -> FuzzCase:
        length = rng.choice((0, 1, 2, 4, 5, 7, 8))
        roi = [rng.choice((-(10**9), -1, 0, 5, 10**9, 2**70)) for _ in range(length)]
        case = _infer(target, rng, roi=roi)
        case.name, case.fields, case.may_succeed = "infer:roi", ("roi",), length == 0
        return case

    def swapped_roi() -> FuzzCase:
        i, j, k = (s // 2 for s in target.shape)
        case = _infer(target, rng, roi=[i + 6, i - 6, j + 6, j - 6, k + 1, k - 1])
        case.name, case.fields, case.may_succeed = "infer:roi-swapped", ("roi",), True
        return case

    def out_of_grid() -> FuzzCase:
        point = [rng.choice((-1, s, s + 1000, 2**31 + 1)) if n == rng.randrange(3) else s // 2
                 for n, s in enumerate(target.shape)]
        key = rng.choice(("foreground", "background"))
        case = _infer(target, rng, **{key: [point]})
        case.name, case.fields = f"infer:{key}-grid", (key,)
        case.may_succeed = point == [s // 2 for s in target.shape]
        return case

    def oversized() -> FuzzCase:
        if rng.random() < 0.5:
            case = _infer(target, rng, foreground=[[1, 1, 1]] * 1001)
            case.fields = ("foreground",)
        else:
            case = _infer(target, rng)
            # over the app's limit, under Starlette's own 1 MiB form-field limit (400 "Field exceeded")
            case.data = {"params": _dumps({"label": "x" * (600 << 10)})}
            case.fields = ("params",)
        case.name = "infer:oversized"
        return case

    def corrupt_upload() -> FuzzCase:
        name = rng.choice(("x.nii.gz", "x.nrrd", "x.txt", "x.py", "../../x.nii.gz"))
        content = rng.choice((b"", b"not an image", os.urandom(2048), nifti_bytes((2, 2)) [:100]))
        case = FuzzCase("infer:file", "POST", "/infer/samri_2d", query={"output": "image"},
                        data={"params": _dumps(target.good_prompt)}, files={"file": (name, content)},
                        fields=("file", "image", "foreground", "slice"))
        return case

    def bad_output() -> FuzzCase:
        case = _infer(target, rng)
        case.query["output"] = rng.choice(("png", "dicom_seg", "", "ALL", "../x"))
        case.name, case.fields, case.may_succeed = "infer:output", ("output",), case.query["output"] == ""
        return case

    def bad_session() -> FuzzCase:
        case = _infer(target, rng)
        case.query = {"session_id": rng.choice(("../x", "nope", "..", "a/b")), "output": "image"}
        case.name, case.fields = "infer:session", ("session_id",)
        return case

    families = [wrong_value, wrong_value, wrong_value, bad_model, bad_image, no_image, not_object, bad_roi,
                swapped_roi, out_of_grid, oversized, corrupt_upload, bad_output, bad_session]
    while True:
        yield rng.choice(families)()


def datastore_cases(target: Target, rng: random.Random) -> Iterator[FuzzCase]:
    """Endless invalid writes and reads against the datastore, session, AL, train and scoring routes."""
    x, y, z = target.shape
    labels = [("wrong-shape", nifti_bytes((x, y, z + 1))), ("float", nifti_bytes((x, y, z), "float32", 0.5)),
              ("negative", nifti_bytes((x, y, z), "int16", -1)), ("spacing", nifti_bytes((x, y, z), spacing=2.0)),
              ("2d", nifti_bytes((x, y))), ("corrupt", os.urandom(4096)), ("empty", b""), ("text", b"hello")]
    label_infos = ("{", "[1]", _dumps({"label_info": "x"}), _dumps({"label_info": [{"name": 3, "idx": "a"}]}),
                   _dumps({"label_info": [{"idx": 1}]}))

    def bad_label() -> FuzzCase:
        kind, content = rng.choice(labels)
        name = "label.txt" if kind == "text" else "label.nii.gz"
        return FuzzCase(f"datastore:label-{kind}", "PUT", "/datastore/label",
                        query={"image": target.image, "tag": "final"},
                        data={"params": _dumps({"label_info": [{"name": "object", "idx": 1}]})},
                        files={"label": (name, content)}, fields=("label", "image"))

    def bad_label_info() -> FuzzCase:
        kind, content = rng.choice(labels)
        return FuzzCase("datastore:label_info", "PUT", "/datastore/label", query={"image": target.image,
                                                                                  "tag": "final"},
                        data={"params": rng.choice(label_infos)}, files={"label": ("l.nii.gz", content)},
                        fields=("params", "label_info", "label"))

    def bad_tag_or_image() -> FuzzCase:
        kind, content = rng.choice(labels)
        query = {"image": rng.choice(BAD_IDS + (target.image,)), "tag": rng.choice(BAD_TAGS)}
        return FuzzCase("datastore:label-traversal", "PUT", "/datastore/label", query=query,
                        files={"label": ("l.nii.gz", content)}, fields=("tag", "image", "label"))

    def bad_upload() -> FuzzCase:
        image = rng.choice(BAD_IDS[:8] + ("evil",))
        name = rng.choice(("evil.py", "evil.sh", "x.nii.gz", "../../x.nii.gz", "x.txt"))
        content = rng.choice((b"import os\n", os.urandom(1024), b""))
        return FuzzCase("datastore:image-upload", "PUT", "/datastore/image", query={"image": image},
                        files={"file": (name, content)}, fields=("image", "file"))

    def bad_delete() -> FuzzCase:
        if rng.random() < 0.5:
            return FuzzCase("datastore:delete-image", "DELETE", "/datastore/image", query={"id": rng.choice(BAD_IDS)},
                            fields=("id", "image"))
        return FuzzCase("datastore:delete-label", "DELETE", "/datastore/label",
                        query={"id": rng.choice(BAD_IDS + (target.image,)), "tag": rng.choice(BAD_TAGS)},
                        fields=("id", "tag", "image"))

    def bad_read() -> FuzzCase:
        path, key = rng.choice((("/datastore/image/info", "image"), ("/datastore/image", "image"),
                                ("/datastore/label", "label"), ("/datastore/label/info", "label")))
        query = {key: rng.choice(BAD_IDS)}
        if "label" in path:
            query["tag"] = rng.choice(BAD_TAGS + ("final",))
        method = rng.choice(("GET", "HEAD")) if path == "/datastore/image" else "GET"
        return FuzzCase(f"datastore:read{path}", method, path, query=query,
                        fields=(key, "tag", "image") if method == "GET" else ())  # HEAD answers carry no body

    def bad_info() -> FuzzCase:
        return FuzzCase("datastore:image-info", "PUT", "/datastore/image/info", query={"image": target.image},
                        data={"info": rng.choice(NOT_OBJECTS[:9])}, fields=("info",))

    def tar_slip() -> FuzzCase:
        member = rng.choice(("../../outside/evil.txt", ABSOLUTE_TARGET, "a/../../evil.txt"))
        return FuzzCase("session:tar-slip", "PUT", "/session/", query={"uncompress": "true"},
                        files={"files": ("study.tar.gz", _tar_with(member))}, fields=("member", "files", "archive"))

    def bad_session_id() -> FuzzCase:
        return FuzzCase("session:id", rng.choice(("GET", "DELETE")), f"/session/{rng.choice(('nope', '.x', 'a..b'))}",
                        fields=("session_id",))

    def bad_task() -> FuzzCase:
        route, kind = rng.choice((("/activelearning/", "strategy"), ("/train/", "model"), ("/scoring/", "method")))
        return FuzzCase(f"task:{kind}", "POST", route + rng.choice(BAD_MODELS[:5]), json_body={}, fields=(kind,))

    def bad_task_params() -> FuzzCase:
        route, params = rng.choice((("/activelearning/random", [1]), ("/train/samri", {"max_epochs": "x"}),
                                    ("/train/samri", {"max_epochs": -1}), ("/train/samri", {"lr": "fast"}),
                                    ("/train/samri", {"max_epochs": 10**400}), ("/train/samri", {"rollback": "../x"}),
                                    ("/activelearning/samri_combined", "x")))
        return FuzzCase("task:params", "POST", route, json_body=params,
                        fields=("params", "max_epochs", "lr", "rollback", "body"))

    families = [bad_label, bad_label, bad_label_info, bad_tag_or_image, bad_tag_or_image, bad_upload, bad_delete,
                bad_read, bad_info, tar_slip, bad_session_id, bad_task, bad_task_params]
    while True:
        yield rng.choice(families)()


def generate(target: Target, count: int, seed: int = 0, infer_share: float = 0.6) -> list[FuzzCase]:
    """``count`` cases, ``infer_share`` of them on /infer, reproducible from ``seed``."""
    rng = random.Random(seed)
    infer, other = infer_cases(target, rng), datastore_cases(target, rng)
    return [next(infer) if rng.random() < infer_share else next(other) for _ in range(count)]


def tree_digest(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file (and symlink target) under ``root``."""
    root = Path(root)
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in exclude):
            continue
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


__all__ = ["ABSOLUTE_TARGET", "FuzzCase", "Target", "datastore_cases", "generate", "infer_cases", "nifti_bytes",
           "tree_digest"]
