"""``samri adapt-sim`` (samri.adaptation): settings, splits, report, and one real run of a tiny model
through a real MONAI Label server on a tiny macaque-like cohort."""

from __future__ import annotations

import json

import pytest

from samri.adaptation.config import AdaptConfig, load_adapt_config
from samri.adaptation.experiment import cohort_splits, pick_structures, run_adaptation
from samri.adaptation.report import render_adaptation, targets
from samri.cohorts import CohortRecipe, write_cohort
from samri.errors import SamriInputError
from samri.train.store import DecoderStore
from tests.apps.helpers import write_tiny_config
from tests.helpers import write_fake_inia


def test_shipped_config_loads_and_bad_fields_are_named():
    cfg = load_adapt_config()
    assert cfg.rounds == (1, 3, 5) and set(cfg.eval_first) == {"box", "point"} and cfg.train["max_epochs"] >= 1
    assert len(cfg.original_images) == 4 and len(cfg.original_labels) == 20
    assert AdaptConfig.from_mapping({}, rounds="2,4").rounds == (2, 4)
    for data, field in (({"nope": 1}, "adaptation"), ({"rounds": [3, 1]}, "rounds"), ({"rounds": "a"}, "rounds"),
                        ({"eval_first": ["lasso"]}, "eval_first"), ({"annotate_first": "x"}, "annotate_first"),
                        ({"heldout_structures": 0}, "heldout_structures"), ({"train": [1]}, "train")):
        with pytest.raises(SamriInputError) as err:
            AdaptConfig.from_mapping(data)
        assert err.value.field == field, data


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


def _headline(noc: float, dice1: float) -> dict:
    return {"box": {"n": 4, "dice1": dice1, "dice5": dice1, "dice_last": dice1, "noc85": noc, "fail85": 0.0,
                    "seconds85": 2 * noc}}


def test_targets_report_met_and_not_met():
    rounds = [{"studies": k, "heldout": {"decoder": f"v{k}", "headline": _headline(noc, d)},
               "original": {"decoder": f"v{k}", "headline": _headline(3.0, 0.8 - (0.02 if k == 5 else 0))}}
              for k, noc, d in ((0, 10.0, 0.5), (3, 5.0, 0.65), (5, 6.0, 0.7))]
    for r in rounds[1:]:
        r["training"] = {"published": True, "live": r["heldout"]["decoder"], "seconds": {"stage1": 1.0},
                         "budget": {"steps": 3}, "wall_seconds": 5.0}
        r["annotated"] = []
    record = {"config": {"eval_first": ["box"], "annotate_first": "box"}, "rounds": rounds, "heldout": ["t"],
              "heldout_structures": ["a"], "annotate": ["s"]}
    lines = "\n".join(targets(record))
    assert "after 3 studies: 50 % lower (aim >= 40 %): met" in lines
    assert "after 5 studies: 40 % lower (aim >= 50 %): not met" in lines
    assert "Dice@1 (box first) after 3 studies: +0.150 (aim >= +0.10): met" in lines
    assert "Dice@1 -0.020" in lines and lines.rstrip().endswith("not met")
    text = render_adaptation(record)
    assert "| 3 | v3 | 0.650 | 0.650 | 5.00 (-50 %) |" in text and "## Training rounds" in text
    assert "Other decoders" not in text
    longer = {"decoder": "data/long/decoder.pt", "headline": _headline(2.5, 0.9)}
    text = render_adaptation(record, extra={"long": longer})
    assert "| `long` | decoder.pt | 0.900 | 0.900 | 2.50 (-75 %) |" in text and "| round 5 | v5 |" in text


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
