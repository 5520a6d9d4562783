"""``samri al-sim`` end to end (samri.activelearning.sim.loop) on the tiny random registry and small
synthetic studies (fast): settings, every strategy, the report, the CLI's exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samri.activelearning.sim.loop import SimConfig, run_simulation
from samri.activelearning.sim.report import markdown_table, write_report
from samri.cli import main
from samri.errors import SamriInputError


def _config(studies: Path, **kw) -> SimConfig:
    base = dict(studies=str(studies), pool={"src_a": ["", "noise:0.05", "inverted"], "src_b": [""]},
                held_out={"src_b": ["bias"]}, start="src_a", labels=("blob", "core"), z_step=3, rounds=2,
                model="tiny", epochs=1, steps_per_epoch=2, batch_size=2, max_val_samples=4, eval_pairs=6,
                score_slices=2, strategies=("random", "first", "samri_uncertainty", "samri_novelty", "samri_combined"))
    return SimConfig.from_mapping({**base, **kw})


def test_config_errors_name_the_key(sim_studies: Path) -> None:
    with pytest.raises(SamriInputError, match="simulation.strategies"):
        _config(sim_studies, strategies=("greedy",))
    with pytest.raises(SamriInputError, match="simulation.rounds"):
        _config(sim_studies, rounds=0)
    with pytest.raises(SamriInputError, match="unknown keys"):
        SimConfig.from_mapping({"pool": {"a": [""]}, "held_out": {"b": [""]}, "colour": 1})


def test_simulation_runs_every_strategy_and_writes_the_report(sim_studies: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import samri.model.backends as backends

    applied = []
    real = backends.apply_backend
    monkeypatch.setattr(backends, "apply_backend", lambda model, *a, **kw: applied.append(kw) or real(model, *a, **kw))
    config = _config(sim_studies)
    results = run_simulation(config, tmp_path / "work", progress=False)
    assert applied == [{"parts": ("encoder",)}]  # the served encoder, as the app's trainer; the decoder trains
    assert results["encoder"]["backend"] == "torch"  # the tiny registry's
    pool = {"src_a", "src_a__noise-0.05", "src_a__inverted", "src_b"}
    assert set(results["curves"]) == set(config.strategies)
    for curve in results["curves"].values():
        assert [p["annotated"] for p in curve] == [1, 2, 3]
        added = [p["study"] for p in curve]
        assert added[0] == "src_a" and len(set(added)) == 3 and set(added) <= pool  # never a held-out study
        assert all(0.0 <= p["mean"] <= 1.0 for p in curve)
    assert results["curves"]["first"][1]["study"] == "src_a__inverted"  # MONAI Label's First: sorted ids
    seen = results["picks"]["samri_uncertainty"][0]["scores"]
    assert set(seen) == pool - {"src_a"} and results["picks"]["samri_uncertainty"][0]["study"] == max(seen,
                                                                                                      key=seen.get)
    first_points = {s: c[0]["mean"] for s, c in results["curves"].items()}
    assert len(set(first_points.values())) == 1  # the start round is shared

    paths = write_report(results, tmp_path / "docs", command="samri al-sim --test")
    assert paths["png"].stat().st_size > 1000 and paths["png"].read_bytes()[:4] == b"\x89PNG"
    table = markdown_table(results)
    assert all(f"| {s} |" in table for s in config.strategies) and "3 annotated" in table
    assert "samri al-sim --test" in paths["md"].read_text() and "Image encoder: torch fp32" in paths["md"].read_text()
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("strategy,annotated,added,dice") and len(rows) == 1 + 3 * len(config.strategies)
    assert json.loads(paths["json"].read_text())["command"] == "samri al-sim --test"


def test_cli_al_sim_reports_bad_config_with_exit_2(sim_studies: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "al.yaml"
    cfg.write_text("simulation:\n  pool: {src_a: ['']}\n  held_out: {src_b: ['']}\n  start: nowhere\n"
                   f"  studies: {sim_studies}\n  model: tiny\n  labels: [blob]\n")
    code = main(["al-sim", "--config", str(cfg), "--out", str(tmp_path / "o"), "--work-dir", str(tmp_path / "w")])
    assert code == 2 and "simulation.start" in capsys.readouterr().err
