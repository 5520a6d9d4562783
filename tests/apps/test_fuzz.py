"""A seeded fuzz of malformed requests against a real ``monailabel start_server --app apps/samri``.

Asserts over `samri.testing.fuzz` cases on /infer, the datastore, sessions, active learning,
training and scoring: no 5xx and no hang, every 4xx names a field the case corrupted, the server
stays up, a good request gives the same mask after as before, and the datastore, the app's model
folder and a folder beside them are byte-identical. ``SAMRI_FUZZ_COUNT`` sets the count (default 300;
``make fuzz`` runs 2,000); ``SAMRI_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests

from samri.bench.http import wait_for_backend
from samri.testing.fuzz import ABSOLUTE_TARGET, Target, generate, tree_digest
from samri.testing.fuzz_run import send
from samri.testing.server import copy_app, start_server
from tests.apps.helpers import APP_DIR

pytestmark = pytest.mark.slow

COUNT = int(os.environ.get("SAMRI_FUZZ_COUNT", "300"))
SEED = int(os.environ.get("SAMRI_FUZZ_SEED", "0"))
#: written by the server while it serves, not data: client logs, the embedding cache.
VOLATILE = ("app/logs", "cache", "server.log", "sessions")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, sample_studies_dir: Path):
    """A server over a copy of the sample studies, with a folder ``outside`` beside the datastore."""
    root = tmp_path_factory.mktemp("fuzz")
    studies = root / "studies"
    shutil.copytree(sample_studies_dir, studies, ignore=shutil.ignore_patterns(".*"))
    (root / "outside" / "code").mkdir(parents=True)
    (root / "outside" / "code" / "keep.py").write_text("KEEP = True\n")
    app = copy_app(APP_DIR, root / "app")
    process = start_server(app_dir=app, studies=studies, log_path=root / "server.log",
                           conf={"precompute": "false", "cache_dir": str(root / "cache")},
                           env={"MONAI_LABEL_SESSION_PATH": str(root / "sessions")})
    try:
        yield process, root, studies
    finally:
        process.stop()


def good_request(url: str, target: Target, tmp_path: Path) -> np.ndarray:
    """The mask of a valid click (the NRRD header holds a write time, so compare the voxels)."""
    resp = requests.post(f"{url}/infer/samri_2d", params={"image": target.image, "output": "image"},
                         data={"params": json.dumps(target.good_prompt)}, timeout=300)
    assert resp.status_code == 200, resp.text
    path = tmp_path / "good.nrrd"
    path.write_bytes(resp.content)
    mask, _ = nrrd.read(str(path))
    return mask


def test_fuzz_gets_no_5xx_and_changes_nothing(fuzz_server, tmp_path: Path) -> None:
    process, root, studies = fuzz_server
    image = "colin27_t1" if (studies / "colin27_t1.nii.gz").is_file() else "mni152_t1"
    target = Target(image, tuple(int(s) for s in nib.load(str(studies / f"{image}.nii.gz")).shape))
    good_request(process.base_url, target, tmp_path)  # loads the model, encodes the slice
    # the first answers come from PyTorch while the OpenVINO export runs (seconds on a fresh machine):
    # compare the masks of one backend, the one served from then on
    wait_for_backend(process.base_url)
    before_mask = good_request(process.base_url, target, tmp_path)
    assert before_mask.any()
    before = tree_digest(root, exclude=VOLATILE)

    statuses: collections.Counter = collections.Counter()
    seconds: list[float] = []
    problems = []
    with requests.Session() as session:
        for case in generate(target, COUNT, seed=SEED):
            outcome = send(session, process.base_url, case, timeout_s=120)
            statuses[outcome.status] += 1
            seconds.append(outcome.seconds)
            if outcome.problem():
                problems.append(f"{case.name} {case.method} {case.path} {case.query}: {outcome.problem()}")
            if outcome.status is None and not process.alive():
                break
    slowest = max(seconds) if seconds else 0.0
    counts = {str(k): v for k, v in sorted(statuses.items(), key=str)}
    print(json.dumps({"count": COUNT, "seed": SEED, "statuses": counts, "problems": len(problems),
                      "slowest_s": round(slowest, 2)}))  # shown by make fuzz (-rA)
    assert process.alive(), process.log_tail()
    assert not problems, f"{len(problems)} of {COUNT} cases broke a rule (statuses {dict(statuses)}):\n" + \
        "\n".join(problems[:40])
    np.testing.assert_array_equal(good_request(process.base_url, target, tmp_path), before_mask)
    after = tree_digest(root, exclude=VOLATILE)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files changed by invalid requests: {changed[:20]}"
    assert not Path(ABSOLUTE_TARGET).exists()
    assert sum(v for k, v in statuses.items() if k and 400 <= k < 500) >= COUNT // 2, statuses
