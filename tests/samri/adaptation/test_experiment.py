"""``samri adapt-sim`` (samri.adaptation.experiment): structures, splits, and one real run of a tiny model
through a real MONAI Label server on a tiny macaque-like cohort."""

from __future__ import annotations

import json

import pytest

from samri.adaptation.config import AdaptConfig
from samri.adaptation.experiment import cohort_splits, pick_structures, run_adaptation
from samri.adaptation.report import render_adaptation
from samri.cohorts import CohortRecipe, write_cohort
from samri.errors import SamriInputError
from samri.train.store import DecoderStore
from tests.apps.helpers import write_tiny_config
from tests.helpers import write_fake_inia


def test_structures_are_seeded_and_present_in_every_study():
    names = [{"a": 1, "b": 2, "c": 3}, {"b": 2, "c": 3, "d": 4}]
    assert pick_structures(names, 5, 0) == ("b", "c")
    one = pick_structures([{f"s{i}": i for i in range(1, 30)}], 4, 7)
    assert one == pick_structures([{f"s{i}": i for i in range(1, 30)}], 4, 7) and len(set(one)) == 4
    with pytest.raises(SamriInputError):
        pick_structures([{"a": 1}, {"b": 2}], 1, 0)


def test_cohort_splits_never_share_a_study(tmp_path):
    folder = write_fake_inia(tmp_path / "mricron")
    write_cohort(tmp_path / "c", CohortRecipe(domain="macaque", subjects=4, annotate=2, min_voxels=5),
                 mricron_dir=folder, progress=False)
    annotate, test, names = cohort_splits(tmp_path / "c")
    assert len(annotate) == 2 and len(test) == 2 and not set(annotate) & set(test)
    assert set(names) == set(annotate) | set(test)
    with pytest.raises(SamriInputError) as err:
        cohort_splits(tmp_path)
    assert err.value.field == "cohort"


@pytest.mark.slow
def test_adapt_sim_runs_rounds_through_a_real_server(tmp_path, monkeypatch):
    """Two rounds: finished labels reach the server's datastore, each round trains through the gate
    and the next measurement uses whatever is live; held-out studies never reach the server."""
    config_dir = write_tiny_config(tmp_path / "configs")
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(config_dir))  # this process and the server
    recipe = CohortRecipe(domain="macaque", subjects=4, annotate=2, min_voxels=5, contrasts=("t1",))
    write_cohort(tmp_path / "cohort", recipe, mricron_dir=write_fake_inia(tmp_path / "mricron"), progress=False)
    cfg = AdaptConfig.from_mapping({
        "cohort": str(tmp_path / "cohort"), "rounds": [1, 2], "model": "tiny", "annotate_structures": 2,
        "annotate_max_clicks": 2, "heldout_structures": 2, "eval_first": ["box"], "eval_max_clicks": 2,
        "train": {"max_epochs": 1, "max_steps_per_epoch": 2, "max_val_samples": 4, "gate_margin": 1.0}})
    record = run_adaptation(cfg, tmp_path / "out", progress=False)

    annotate, test, _ = cohort_splits(tmp_path / "cohort")
    assert [r["studies"] for r in record["rounds"]] == [0, 1, 2]
    assert [a["study"] for r in record["rounds"][1:] for a in r["annotated"]] == annotate
    finals = sorted(p.name for p in (tmp_path / "out" / "studies" / "labels" / "final").glob("*.nii.gz"))
    assert finals == sorted(f"{s}.nii.gz" for s in annotate)
    assert not any(s in p.name for p in (tmp_path / "out" / "studies").rglob("*") for s in test)
    store = DecoderStore(tmp_path / "out" / "app" / "model" / "decoders")
    previous = "base"
    for r in record["rounds"][1:]:
        t = r["training"]
        assert t["task_status"] == "DONE" and t["status"] == "done"
        assert t["wall_seconds"] > 0 and t["budget"]["steps"] == 2
        assert r["heldout"]["decoder"] == t["live"]  # measured with what the gate left live
        assert t["live"] == (t["version"] if t["published"] else previous)
        previous = t["live"]
        assert r["heldout"]["headline"]["box"]["n"] == 2 * len(test)
    assert store.resolve()[0] == previous
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(record))
    assert "## Held-out studies" in render_adaptation(record)
