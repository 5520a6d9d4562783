"""``python -m samri.adaptation.measure_decoder``: any decoder on a run's held-out sessions (tiny model)."""

from __future__ import annotations

import json

import torch

from samri.adaptation.experiment import cohort_splits, pick_structures
from samri.adaptation.measure_decoder import heldout_set, main
from samri.cohorts import CohortRecipe, write_cohort
from samri.config import load_registry
from samri.model.builders import load_model
from samri.model.checkpoints import save_decoder_checkpoint
from tests.apps.helpers import write_tiny_config
from tests.helpers import write_fake_inia


def test_a_decoder_file_is_measured_on_the_runs_heldout_sessions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(write_tiny_config(tmp_path / "configs")))
    cohort = tmp_path / "cohort"
    write_cohort(cohort, CohortRecipe(domain="macaque", subjects=3, annotate=1, min_voxels=5, contrasts=("t1",)),
                 mricron_dir=write_fake_inia(tmp_path / "mricron"), progress=False)
    _, test, names = cohort_splits(cohort)
    run = tmp_path / "run"
    run.mkdir()
    record = {"config": {"cohort": str(cohort), "model": "tiny", "eval_first": ["box"], "eval_max_clicks": 2,
                         "human_seconds": 2.0},
              "heldout": test, "heldout_structures": list(pick_structures([names[s] for s in test], 2, 0))}
    (run / "summary.json").write_text(json.dumps(record))
    assert heldout_set(record).images == tuple(cohort / f"{s}.nii.gz" for s in test)

    spec = load_registry().spec("tiny")
    silent = load_model(spec).mask_decoder
    with torch.no_grad():
        for p in silent.parameters():
            p.zero_()  # logits 0 everywhere: an empty mask, Dice 0 on every session
    save_decoder_checkpoint(tmp_path / "silent.pt", mask_decoder=silent, base_model="tiny",
                            preprocessing=spec.preprocessing.to_dict(), metadata={})
    assert main([str(run), "--decoder", str(tmp_path / "silent.pt"), "--name", "silent"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((run / "extra" / "silent.json").read_text())
    assert saved["headline"] == printed and saved["decoder"].endswith("silent.pt")
    box = printed["box"]
    assert box["n"] == 2 * len(test) and box["dice1"] == 0.0 and box["noc85"] == 2 and box["fail85"] == 1.0
    assert (run / "extra" / "silent" / "summary.json").is_file()
    # with the cohort's finished shapes the silent decoder's first box answer is the shapes' mean in the box
    assert main([str(run), "--decoder", str(tmp_path / "silent.pt"), "--name", "shaped", "--shapes-from",
                 str(cohort)]) == 0
    shaped = json.loads((run / "extra" / "shaped.json").read_text())
    assert shaped["shapes_from"] == str(cohort) and shaped["headline"]["box"]["dice1"] > 0.5


def test_a_folder_without_a_run_measures_the_sessions_adapt_sim_would(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(write_tiny_config(tmp_path / "configs")))
    cohort = tmp_path / "cohort"
    write_cohort(cohort, CohortRecipe(domain="macaque", subjects=3, annotate=1, min_voxels=5, contrasts=("t1",)),
                 mricron_dir=write_fake_inia(tmp_path / "mricron"), progress=False)
    config = tmp_path / "adaptation.yaml"
    config.write_text(f"cohort: {cohort}\nmodel: tiny\nrounds: [1]\nheldout_structures: 2\neval_first: [point]\n"
                      "eval_max_clicks: 2\nseed: 3\n")
    _, test, names = cohort_splits(cohort)
    out = tmp_path / "ab"
    assert main([str(out), "--config", str(config), "--name", "base"]) == 0
    record = json.loads((out / "heldout.json").read_text())
    assert record["heldout"] == test
    assert record["heldout_structures"] == list(pick_structures([names[s] for s in test], 2, 3))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(printed) == ["point"] and printed["point"]["n"] == 2 * len(test)
    assert json.loads((out / "extra" / "base.json").read_text())["decoder"] == "base"
    assert any((out / "cache").iterdir())  # the embeddings of the held-out slices stay for the next decoder
