"""``samri evaluate`` (samri.evaluation.cli): bad input fails first; tiny-model and real LiteMedSAM runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from samri.errors import SamriInputError
from samri.evaluation.cli import add_evaluate_parser, command_line
from samri.model.checkpoints import save_decoder_checkpoint
from tests.helpers import TINY_ARCHITECTURE, ellipsoid_mask, synthetic_array

AFFINE = np.diag([1.2, 0.8, 1.5, 1.0])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="samri")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["evaluate", *argv])


def run(argv: list[str]) -> int:
    args = parse(argv)
    return args.func(args)


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    """A synthetic image, its label (ellipsoid = 1, small blob = 2), and broken labels."""
    label = ellipsoid_mask().astype(np.uint8)
    label[ellipsoid_mask(center=(8.0, 8.0, 15.0), radii=(4.0, 5.0, 5.0))] = 2
    out = {}
    for name, array, affine in (("image", synthetic_array(), AFFINE), ("label", label, AFFINE),
                                ("shape", label[:, :-2], AFFINE), ("affine", label, np.diag([1.2, 0.8, 3.0, 1.0])),
                                ("empty", np.zeros_like(label), AFFINE)):
        out[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(out[name]))
    (tmp_path / "names.json").write_text(json.dumps({"body": 1, "blob": 2}))
    out["names"] = tmp_path / "names.json"
    return out


@pytest.fixture()
def tiny_registry(tmp_path, monkeypatch):
    """A registry holding only the tiny random-weight SAM (``SAMRI_CONFIG_DIR``)."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "models.yaml").write_text(yaml.safe_dump({"default_model": "tiny", "models": {"tiny": {
        "architecture": dict(TINY_ARCHITECTURE), "checkpoint": None, "random_init": True,
        "preprocessing": {"input_size": 64}}}}))
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(folder))
    return folder


@pytest.mark.parametrize("change, field", [
    ({"--label": "shape"}, "label"), ({"--label": "affine"}, "label"), ({"--label": "empty"}, "label"),
    ({"--model": "no_such_model"}, "model"), ({"--prompts": ""}, "prompts"), ({"--prompts": "box,lasso"}, "prompts"),
    ({"--labels": "body,nothing"}, "labels"), ({"--variant": "blur"}, "variant"), ({"--decoder": "missing.pt"},
                                                                                   "decoder"),
    ({"--jitter": "2"}, "jitter"), ({"--backend": "tensorrt"}, "backend"), ({"--backend": "torch:int4"}, "backend"),
    ({"--label-names": "missing.json"}, "label-names")])
def test_bad_input_fails_before_any_work(files, tmp_path, change, field):
    options = {"--image": str(files["image"]), "--label": str(files["label"]), "--model": "litemedsam",
               "--prompts": "box", "--out": str(tmp_path / "out"), "--label-names": str(files["names"])}
    for key, value in change.items():
        options[key] = str(files.get(value, value)) if key == "--label" else value
    argv = [x for kv in options.items() for x in kv]
    with pytest.raises(SamriInputError) as err:
        run(argv)
    assert err.value.field.startswith(field)
    assert not (tmp_path / "out").exists()


def test_image_label_count_mismatch(files, tmp_path):
    with pytest.raises(SamriInputError) as err:
        run(["--image", str(files["image"]), "--image", str(files["image"]), "--label", str(files["label"]),
             "--out", str(tmp_path / "out")])
    assert err.value.field == "label"


def test_main_cli_maps_bad_input_to_exit_2(files, tmp_path, capsys):
    from samri import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "evaluate" in sub.choices
    code = cli.main(["evaluate", "--image", str(files["image"]), "--label", str(files["empty"]),
                     "--out", str(tmp_path / "out")])
    assert code == 2 and "label" in capsys.readouterr().err


@pytest.mark.slow  # a whole evaluation run, two models and a variant
def test_tiny_models_side_by_side_through_the_cli(files, tmp_path, tiny_registry, fresh_tiny_model, capsys):
    decoder = save_decoder_checkpoint(tmp_path / "ft.pt", mask_decoder=fresh_tiny_model.mask_decoder,
                                      base_model="tiny", preprocessing={"input_size": 64}, metadata={"v": 1})
    out = tmp_path / "out"
    argv = ["--image", str(files["image"]), "--label", str(files["label"]), "--label-names", str(files["names"]),
            "--model", "tiny", "--model", f"tiny@{decoder}", "--prompts", "box,box+point", "--slice-step", "5",
            "--variant", "inverted", "--out", str(out), "--no-progress"]
    assert run(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"tiny", "tiny@ft"}
    assert summary["results"]["tiny"]["box"]["n"] == summary["results"]["tiny@ft"]["box"]["n"] > 0
    assert set(summary["results"]["tiny"]["box"]["by_structure"]) == {"body", "blob"}
    assert summary["variants"]["inverted"]["tiny"]["box+point"]["n"] > 0
    assert summary["images"][0]["spacing_mm"] == [1.2, 0.8, 1.5]
    assert summary["command"].startswith("samri evaluate --image") and summary["machine"]["cores"]
    assert "tiny@ft" in capsys.readouterr().out
    assert command_line(parse(argv)).count("--model") == 2


def test_an_ohif_clicks_run_records_its_client(files, tmp_path, tiny_registry):
    out = tmp_path / "out"
    argv = ["--image", str(files["image"]), "--label", str(files["label"]), "--label-names", str(files["names"]),
            "--labels", "body", "--model", "tiny", "--protocol", "clicks", "--first", "point", "--max-clicks", "3",
            "--client", "ohif", "--max-pairs", "1", "--out", str(out), "--no-progress"]
    assert run(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["client"] == "ohif" and "--client ohif" in summary["command"]
    assert summary["results"]["tiny"]["clicks:point"]["n"] > 0
    assert "OHIF's requests" in (out / "report.md").read_text()
    with pytest.raises(SamriInputError, match="first"):
        run([*argv[:-3], "--first", "box,point", "--out", str(tmp_path / "box"), "--no-progress"])


def test_backends_side_by_side_on_the_same_pairs(files, tmp_path, tiny_registry, fresh_tiny_model):
    """``--backend`` runs every model with each backend on the same pairs; fp32 OpenVINO agrees with eager."""
    import torch

    weights, out = tmp_path / "tiny.pt", tmp_path / "out"
    torch.save(fresh_tiny_model.state_dict(), weights)  # one set of weights for both loads
    argv = ["--image", str(files["image"]), "--label", str(files["label"]), "--label-names", str(files["names"]),
            "--labels", "body", "--model", "tiny", "--checkpoint", str(weights),
            "--backend", "torch", "--backend", "openvino:fp32",
            "--prompts", "box", "--slice-step", "6", "--out", str(out), "--no-progress"]
    assert run(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    eager, exported = summary["results"]["tiny[torch]"]["box"], summary["results"]["tiny[openvino:fp32]"]["box"]
    assert eager["n"] == exported["n"] > 0
    assert abs(eager["mean_dice"] - exported["mean_dice"]) <= 0.01
    assert "served by openvino fp32" in summary["models"]["tiny[openvino:fp32]"]
    assert "served by torch fp32" in summary["models"]["tiny[torch]"]
    assert command_line(parse(argv)).count("--backend") == 2


# --- real model on the sample studies (slow) ----------------------------------------------------
@pytest.mark.slow
def test_litemedsam_on_sample_studies(tmp_path):
    from samri.sample_data import available_sources, write_sample_studies

    source, study, labels = (("colin27", "colin27_t1", "Putamen_L,Thalamus_L") if "colin27" in available_sources()
                             else ("mni152", "mni152_t1", "white_matter"))
    studies = tmp_path / "studies"
    write_sample_studies(studies, sources=[source])
    out = tmp_path / "eval"
    argv = ["--image", str(studies / f"{study}.nii.gz"), "--label",
            str(studies / "labels" / "final" / f"{study}.nii.gz"),
            "--model", "litemedsam", "--labels", labels, "--prompts", "box,point,box+point", "--slice-step", "2",
            "--max-pairs", "1", "--variant", "bias", "--out", str(out), "--no-progress"]
    assert run(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    for prompt in ("box", "point", "box+point"):
        s = summary["results"]["litemedsam"][prompt]
        assert {"mean_dice", "median_dice", "n", "hd95_mm", "nsd", "buckets", "buckets_fixed"} <= set(s)
        assert set(s["buckets"]) == {"small", "medium", "large"}
        assert s["n"] == len(labels.split(","))
    assert summary["results"]["litemedsam"]["box"]["mean_dice"] > 0.5  # LiteMedSAM with a tight box
    assert summary["variants"]["bias"]["litemedsam"]["box"]["n"] == summary["results"]["litemedsam"]["box"]["n"]
    report = (out / "report.md").read_text()
    for name in ("dice_boxplot.png", "variants.png", "overlays_litemedsam.png"):
        assert name in report and (out / name).stat().st_size > 1000


def test_propagation_overrides_are_typed_and_named():
    from samri.evaluation.cli import parse_propagation

    rules = parse_propagation(["chain_logits=true", "min_relative_iou=0.8", "min_area=5"])
    assert rules.chain_logits is True and rules.min_relative_iou == 0.8 and rules.min_area == 5
    assert parse_propagation(None).chain_logits is False
    for bad in (["chain_logits"], ["nope=1"], ["chain_logits=maybe"], ["min_area=2.5"]):
        with pytest.raises(SamriInputError) as err:
            parse_propagation(bad)
        assert err.value.field == "propagation" and err.value.value == bad[0]
