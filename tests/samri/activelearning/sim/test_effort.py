"""``samri al-effort`` (samri.activelearning.sim.effort and effort_report): config errors, the target rule,
the paired verdicts, and one real in-process run of a tiny model on a tiny macaque-like cohort."""

from __future__ import annotations

import json

import pytest

from samri.activelearning.sim.effort import EffortConfig, run_effort, target_reached_at
from samri.activelearning.sim.effort_report import compare_to_random, render_effort, spread, write_effort_figure
from samri.cohorts import CohortRecipe, write_cohort
from samri.errors import SamriInputError
from tests.apps.helpers import write_tiny_config
from tests.helpers import write_fake_inia


@pytest.mark.parametrize("data, field", [
    ({"strategies": ["random", "best"]}, "effort.strategies"),
    ({"seeds": []}, "effort.seeds"),
    ({"seeds": "0,x"}, "effort.seeds"),
    ({"studies_per_run": 0}, "effort.studies_per_run"),
    ({"target_figure": "dice5"}, "effort.target_figure"),
    ({"target_figure": "noc85", "target_change": 0.5}, "effort.target_change"),
    ({"target_figure": "dice1", "target_change": -0.1}, "effort.target_change"),
    ({"train": [1, 2]}, "effort.train"),
    ({"bogus": 1}, "effort"),
])
def test_config_errors_name_the_key(data, field):
    with pytest.raises(SamriInputError) as err:
        EffortConfig.from_mapping(data)
    assert err.value.field == field


def test_config_parses_comma_lists():
    cfg = EffortConfig.from_mapping({}, strategies="random,samri_novelty", seeds="3,4")
    assert cfg.strategies == ("random", "samri_novelty") and cfg.seeds == (3, 4)


def _curve(values, figure):
    return [{"heldout": {figure: v}, "clicks_so_far": 10.0 * i} for i, v in enumerate(values)]


def test_target_is_a_change_from_the_shipped_decoder_and_round_0_never_counts():
    assert target_reached_at(_curve([9.0, 8.9, 8.4, 8.0], "noc85"), "noc85", -0.5) == 2
    assert target_reached_at(_curve([0.50, 0.51, 0.53], "dice1"), "dice1", 0.02) == 2
    assert target_reached_at(_curve([0.50, 0.51, 0.515], "dice1"), "dice1", 0.02) is None
    assert target_reached_at(_curve([0.50], "dice1"), "dice1", 0.0) is None


def _record(finals: dict[str, list[float]]) -> dict:
    def rounds(v: float) -> list[dict]:
        return [{"clicks_so_far": 0.0, "heldout": {"noc85": 9.0, "dice1": 0.5}},
                {"clicks_so_far": 100.0 + v, "heldout": {"noc85": v, "dice1": 0.5}}]

    runs = [{"strategy": s, "seed": seed, "rounds": rounds(v)} for s, values in finals.items()
            for seed, v in enumerate(values)]
    return {"runs": runs}


def test_verdict_needs_a_paired_difference_beyond_both_seed_spreads():
    record = _record({"random": [9.0, 8.0, 8.5], "samri_a": [7.0, 6.0, 6.5], "samri_b": [8.8, 8.2, 8.9]})
    verdict = compare_to_random(record, "noc85")
    assert verdict["samri_a"]["mean_diff"] == pytest.approx(-2.0) and verdict["samri_a"]["beyond_spread"]
    assert verdict["samri_a"]["seed_sd"] == pytest.approx(0.5)
    assert not verdict["samri_b"]["beyond_spread"]  # mean diff +0.13 within the 0.5 spread
    assert spread([1.0, None, 3.0]) == (2.0, pytest.approx(1.4142135), 2)
    assert spread([None]) == (None, None, 0)


@pytest.mark.slow
def test_al_effort_runs_each_strategy_and_seed_and_shares_work(tmp_path, monkeypatch):
    """Two strategies x two seeds on a tiny cohort: picks never repeat a study or touch the held-out ones,
    costs add up, training goes through the gate, a rerun is served from the memo."""
    config_dir = write_tiny_config(tmp_path / "configs")
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(config_dir))
    recipe = CohortRecipe(domain="macaque", subjects=5, annotate=3, min_voxels=5, contrasts=("t1",))
    write_cohort(tmp_path / "cohort", recipe, mricron_dir=write_fake_inia(tmp_path / "mricron"), progress=False)
    cfg = EffortConfig.from_mapping({
        "cohort": str(tmp_path / "cohort"), "model": "tiny", "strategies": ["random", "samri_uncertainty"],
        "seeds": [0, 1], "studies_per_run": 2, "annotate_structures": 2, "annotate_max_clicks": 2,
        "heldout_structures": 2, "eval_max_clicks": 2, "score_slices": 2,
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "max_val_samples": 4, "validation_clicks": 2}})
    import samri.model.backends as backends

    applied = []
    real = backends.apply_backend
    monkeypatch.setattr(backends, "apply_backend", lambda model, *a, **kw: applied.append(kw) or real(model, *a, **kw))
    record = run_effort(cfg, tmp_path / "work", progress=False)
    assert applied == [{"parts": ("encoder",)}]  # the served encoder, as the app's trainer; the decoder trains
    assert record["encoder"]["backend"] == "torch"  # the tiny registry's

    annotate, test = record["cohort"]["annotate"], record["cohort"]["test"]
    assert len(record["runs"]) == 4 and record["base"]["n"] == 2 * len(test)
    for run in record["runs"]:
        studies = [r["study"] for r in run["rounds"][1:]]
        assert studies[0] == annotate[run["seed"] % len(annotate)]
        assert len(set(studies)) == 2 and set(studies) <= set(annotate)
        costs = [r["cost"]["clicks"] for r in run["rounds"][1:]]
        assert all(2 <= c <= 2 * 2 for c in costs)  # 2 sessions of 1..2 interactions
        assert run["rounds"][-1]["clicks_so_far"] == pytest.approx(sum(costs))
        assert run["rounds"][-1]["clicks80_so_far"] == pytest.approx(sum(r["cost"]["clicks80"]
                                                                         for r in run["rounds"][1:]))
        assert all(r["heldout"]["noc80"] <= r["heldout"]["noc85"] for r in run["rounds"])
        assert all(r["training"]["steps"] == 2 and r["training"]["reason"] for r in run["rounds"][1:])
    first_rounds = {(r["seed"], json.dumps(r["rounds"][1]["heldout"])) for r in record["runs"]}
    assert len({seed for seed, _ in first_rounds}) == len(first_rounds) == 2  # same first study, same decoder
    again = run_effort(cfg, tmp_path / "work", progress=False)
    assert again["runs"] == json.loads(json.dumps(record["runs"]))
    assert again["timings"]["train"] == 0.0  # every decoder came from the memo
    assert write_effort_figure(record, tmp_path / "fig.png").stat().st_size > 1000
    text = render_effort(record, command="samri al-effort")
    assert "## Against MONAI Label's random" in text and "samri_uncertainty" in text
    assert "Image encoder: torch fp32" in text
    assert "PyTorch eager fp32 (not recorded" in render_effort({**record, "encoder": {}}, command="x")
