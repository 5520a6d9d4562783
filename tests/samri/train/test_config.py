"""The typed training config: defaults, the recipe's overlay on training.yaml, errors naming file and key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from samri.annotator import SimSettings
from samri.errors import SamriInputError
from samri.train.config import TrainConfig, TrainSettings, load_train_config, merge_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
MIX = {"box": 0.3, "point": 0.15, "box+point": 0.25, "points_neg": 0.1, "propagated_box": 0.2}
CLICKS_SIM = SimSettings(mode_weights=MIX, box_jitter=0.04, max_negatives=2, correction_prob=0.8, correction_rounds=4)


def _write(folder: Path, name: str, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(data))
    return folder / name


# --- defaults -------------------------------------------------------------------------------------------------
def test_keys_left_out_keep_the_dataclass_defaults():
    assert TrainConfig.from_mapping(None) == TrainConfig.from_mapping({}) == TrainConfig()
    assert TrainConfig().settings == TrainSettings() and TrainSettings().sim == SimSettings()
    partial = TrainConfig.from_mapping({"optimizer": {"lr": 1e-3}, "loss": None, "max_slices": 0})
    assert partial == TrainConfig(settings=TrainSettings(lr=1e-3))  # 0 = unbounded = None
    # PyYAML reads 1e-4 (no dot) as a string: accepted as the number it spells
    assert TrainConfig.from_mapping(yaml.safe_load("optimizer: {lr: 1e-4}")).settings.lr == 1e-4


def test_box_clip_is_a_boolean_loss_setting():
    assert TrainSettings().box_clip is False
    assert TrainConfig.from_mapping({"loss": {"box_clip": True}}).settings.box_clip is True


def test_validation_click_fill_is_a_boolean_validation_setting():
    assert TrainSettings().validation_click_fill is False
    cfg = TrainConfig.from_mapping({"validation": {"click_fill": True, "label_stride": 4}})
    assert cfg.settings.validation_click_fill is True and cfg.label_stride == 4


def test_missing_training_yaml_means_builtin_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(tmp_path))
    assert load_train_config() == TrainConfig()
    with pytest.raises(SamriInputError, match="file not found"):  # a named overlay must exist
        load_train_config(tmp_path / "nope.yaml")


def test_shipped_training_yaml():
    cfg = load_train_config(base=CONFIGS / "training.yaml")
    assert cfg == TrainConfig(settings=TrainSettings(lr=1e-4, weight_decay=0.1, lambda_dice=1.0, lambda_focal=10.0,
                                                     focal_gamma=2.0, iou_weight=1.0, click_weight=0.1, box_clip=True,
                                                     epochs=4, batch_size=8, max_steps_per_epoch=12, max_val_samples=32,
                                                     max_slices=16, validation_clicks=5, validation_click_fill=True,
                                                     shape_prior_weight=2.0, shape_prior_candidates=64,
                                                     shape_prior_click_penalty=0.3, seed=0, sim=CLICKS_SIM),
                              min_pixels=30, axes=(2,), val_fraction=0.25, include_labels=None, label_stride=0,
                              gate_margin=0.0)


def test_a_negative_click_penalty_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shape_prior:\n  click_penalty: -0.5\n")
    with pytest.raises(SamriInputError, match="shape_prior.click_penalty"):
        load_train_config(bad, base=CONFIGS / "training.yaml")


# --- the recipe: its YAMLs hold only what differs, and parse to what the full YAMLs gave -------------------------
def test_recipe_stage1_values_are_pinned():
    """Values the full ``training_default_decoder.yaml`` gave before it was cut down to its differences."""
    cfg = load_train_config(CONFIGS / "training_default_decoder.yaml", base=CONFIGS / "training.yaml")
    sim = SimSettings(mode_weights=MIX, box_jitter=0.04, max_negatives=2, correction_prob=0.5, correction_rounds=1)
    assert cfg == TrainConfig(settings=TrainSettings(lr=1e-4, weight_decay=0.1, lambda_dice=1.0, lambda_focal=10.0,
                                                     focal_gamma=2.0, iou_weight=1.0, click_weight=0.0, epochs=5,
                                                     batch_size=8, max_steps_per_epoch=250, max_val_samples=128,
                                                     max_slices=None, validation_clicks=0, seed=0, sim=sim),
                              min_pixels=30, axes=(2,), val_fraction=0.25, include_labels=None, label_stride=4,
                              gate_margin=0.0)


def test_recipe_stage2_values_are_pinned():
    """Values the full ``training_default_decoder_clicks.yaml`` gave before it was cut down."""
    cfg = load_train_config(CONFIGS / "training_default_decoder_clicks.yaml", base=CONFIGS / "training.yaml")
    assert cfg == TrainConfig(settings=TrainSettings(lr=1e-4, weight_decay=0.1, lambda_dice=1.0, lambda_focal=10.0,
                                                     focal_gamma=2.0, iou_weight=1.0, click_weight=0.5, epochs=3,
                                                     batch_size=8, max_steps_per_epoch=60, max_val_samples=64,
                                                     max_slices=None, validation_clicks=5, seed=0, sim=CLICKS_SIM),
                              min_pixels=30, axes=(2,), val_fraction=0.25, include_labels=None, label_stride=4,
                              gate_margin=0.0)


def test_recipe_stage4_is_stage3_with_a_lighter_click_loss():
    """The fourth stage repeats the third's settings; only the click loss differs (0.1 against 0.5)."""
    stage3 = load_train_config(CONFIGS / "training_default_decoder_pseudo.yaml", base=CONFIGS / "training.yaml")
    stage4 = load_train_config(CONFIGS / "training_default_decoder_light_clicks.yaml", base=CONFIGS / "training.yaml")
    assert stage3.settings.click_weight == 0.5 and stage4.settings.click_weight == 0.1
    assert load_train_config(base=CONFIGS / "training.yaml").settings.click_weight == 0.1  # the app's trainer too
    assert stage4 == replace(stage3, settings=replace(stage3.settings, click_weight=0.1))


def test_recipe_stage5_is_stage4_with_finer_parcels_and_tubes():
    """The fifth stage (measured, not shipped) repeats the fourth's settings, adds two pseudo-structure
    studies, and validates on twice the pairs (the AAL structures and the validation cohort's, pooled)."""
    stage4 = load_train_config(CONFIGS / "training_default_decoder_light_clicks.yaml", base=CONFIGS / "training.yaml")
    stage5 = load_train_config(CONFIGS / "training_default_decoder_tracts.yaml", base=CONFIGS / "training.yaml")
    assert stage5.pseudo_white_tubes > 0 and stage5.pseudo_fine_white_cells > stage4.pseudo_white_cells
    assert stage5.pseudo_fine_grey_cells == 0  # finer grey parcels cost 3D Dice on AAL (docs/DECODER.md)
    assert stage5.settings.max_val_samples == 2 * stage4.settings.max_val_samples
    assert stage5 == replace(stage4, settings=replace(stage4.settings, max_val_samples=stage5.settings.max_val_samples),
                             pseudo_fine_grey_cells=stage5.pseudo_fine_grey_cells,
                             pseudo_fine_white_cells=stage5.pseudo_fine_white_cells,
                             pseudo_white_tubes=stage5.pseudo_white_tubes)


def test_recipe_stages_keep_the_box_clip_and_click_fill_off_as_they_ran():
    """The app's trainer clips to the box and validates with click fill; the recipe's five stages ran before
    that and keep reproducing."""
    shipped = load_train_config(base=CONFIGS / "training.yaml").settings
    assert shipped.box_clip is True and shipped.validation_click_fill is True
    for name in ("training_default_decoder.yaml", "training_default_decoder_clicks.yaml",
                 "training_default_decoder_pseudo.yaml", "training_default_decoder_light_clicks.yaml",
                 "training_default_decoder_tracts.yaml"):
        settings = load_train_config(CONFIGS / name, base=CONFIGS / "training.yaml").settings
        assert settings.box_clip is False and settings.validation_click_fill is False, name


def test_recipe_yamls_hold_only_what_differs():
    base = yaml.safe_load((CONFIGS / "training.yaml").read_text())
    for name in ("training_default_decoder.yaml", "training_default_decoder_clicks.yaml",
                 "training_default_decoder_light_clicks.yaml", "training_default_decoder_tracts.yaml"):
        recipe = yaml.safe_load((CONFIGS / name).read_text())
        for key, value in recipe.items():
            if isinstance(value, dict):
                same = {k for k, v in value.items() if (base.get(key) or {}).get(k, object()) == v}
                assert not same, f"{name}: {key}.{sorted(same)} repeat training.yaml"
            else:
                assert base.get(key, object()) != value, f"{name}: {key} repeats training.yaml"


# --- overlay ------------------------------------------------------------------------------------------------
def test_merge_config_merges_sections_and_replaces_values():
    base = {"optimizer": {"lr": 1.0, "weight_decay": 0.1}, "axes": [2],
            "prompts": {"mode_weights": {"box": 1.0, "point": 1.0}, "box_jitter": 0.04}, "gate": {"margin": 0.1}}
    over = {"optimizer": {"lr": 2.0}, "axes": [0, 1], "prompts": {"mode_weights": {"point": 1.0}}, "gate": None}
    assert merge_config(base, over) == {"optimizer": {"lr": 2.0, "weight_decay": 0.1}, "axes": [0, 1],
                                        "prompts": {"mode_weights": {"point": 1.0}, "box_jitter": 0.04},
                                        "gate": {"margin": 0.1}}
    assert base["optimizer"]["lr"] == 1.0  # inputs are not changed
    assert merge_config(None, over)["axes"] == [0, 1] and merge_config(base, None) == base


def test_load_overlays_the_file_then_the_overrides(tmp_path):
    base = _write(tmp_path, "training.yaml", {"epochs": 4, "optimizer": {"lr": 1e-4, "weight_decay": 0.2}})
    over = _write(tmp_path, "recipe.yaml", {"optimizer": {"lr": 1e-3}, "include_labels": ["a"]})
    cfg = load_train_config(over, base=base, overrides={"epochs": 7}, overrides_source="command line")
    assert (cfg.settings.epochs, cfg.settings.lr, cfg.settings.weight_decay, cfg.include_labels) == \
        (7, 1e-3, 0.2, ("a",))
    assert load_train_config(base, base=base) == load_train_config(base=base)  # training.yaml on itself
    with pytest.raises(SamriInputError) as err:
        load_train_config(over, base=base, overrides={"epochs": 0}, overrides_source="command line")
    assert err.value.field == "command line: epochs" and err.value.value == 0


def test_replace_routes_settings_fields_and_run_arguments():
    cfg = TrainConfig().replace(epochs=2, lr=0.5, gate_margin=0.1, include_labels=("x",))
    assert (cfg.settings.epochs, cfg.settings.lr, cfg.gate_margin, cfg.include_labels) == (2, 0.5, 0.1, ("x",))
    assert TrainConfig().replace(min_pixels=3).settings == TrainSettings()
    args = cfg.run_arguments()
    assert args == {"settings": cfg.settings, "min_pixels": 30, "axes": (2,), "val_fraction": 0.25,
                    "include_labels": ["x"]}
    with pytest.raises(TypeError):
        TrainConfig().replace(nosuch=1)


# --- errors name the file and the key ------------------------------------------------------------------------
@pytest.mark.parametrize("data,field", [
    ({"optimizer": {"lr": -1}}, "optimizer.lr"),
    ({"optimizer": {"lr": 0}}, "optimizer.lr"),
    ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
    ({"optimizer": {"learning_rate": 1e-4}}, "optimizer.learning_rate"),
    ({"optimizer": 0.1}, "optimizer"),
    ({"loss": {"lambda_focal": float("nan")}}, "loss.lambda_focal"),
    ({"loss": {"box_clip": "yes"}}, "loss.box_clip"),
    ({"loss": {"box_clip": 1}}, "loss.box_clip"),
    ({"validation": {"click_fill": "on"}}, "validation.click_fill"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"batch_size": True}, "batch_size"),
    ({"max_slices": -1}, "max_slices"),
    ({"max_val_samples": 0}, "max_val_samples"),
    ({"min_pixels": "30"}, "min_pixels"),
    ({"axes": [3]}, "axes"),
    ({"axes": [2, 2]}, "axes"),
    ({"axes": 2}, "axes"),
    ({"val_fraction": 1.5}, "val_fraction"),
    ({"include_labels": [1]}, "include_labels"),
    ({"include_labels": "a,b"}, "include_labels"),
    ({"validation": {"label_stride": 1}}, "validation.label_stride"),
    ({"validation": {"clicks": 5}}, "validation.clicks"),
    ({"gate": {"margin": -0.1}}, "gate.margin"),
    ({"prompts": {"mode_weights": {"scribble": 1.0}}}, "prompts.mode_weights"),
    ({"prompts": {"mode_weights": {"box": "a lot"}}}, "prompts.mode_weights.box"),
    ({"prompts": {"correction_prob": 1.5}}, "prompts.correction_prob"),
    ({"prompts": {"correction_rounds": 0}}, "prompts.correction_rounds"),
    ({"epoch": 4}, "epoch"),
])
def test_bad_key_or_value_names_file_and_key(data, field):
    with pytest.raises(SamriInputError) as err:
        TrainConfig.from_mapping(data, source="training.yaml")
    assert err.value.field == f"training.yaml: {field}"
    assert str(err.value).startswith(f"training.yaml: {field}=")


def test_error_in_an_overlay_names_that_file(tmp_path):
    base = _write(tmp_path, "training.yaml", {"epochs": 4})
    over = _write(tmp_path, "recipe.yaml", {"optimizer": {"lr": -1.0}})
    with pytest.raises(SamriInputError) as err:
        load_train_config(over, base=base)
    assert err.value.field == "recipe.yaml: optimizer.lr" and err.value.value == -1.0
    _write(tmp_path, "training.yaml", {"nosuch": 1})
    with pytest.raises(SamriInputError, match="training.yaml: nosuch"):
        load_train_config(over, base=base)
    _write(tmp_path, "training.yaml", ["epochs", 4])
    with pytest.raises(SamriInputError, match="must be a YAML mapping"):
        load_train_config(base=base)


@pytest.mark.parametrize("value,expected", [(None, None), (0, None), (12, 12)])
def test_yaml_budget_zero_or_null_is_unbounded(value, expected):
    settings = TrainConfig.from_mapping({"max_slices": value, "max_steps_per_epoch": value}).settings
    assert settings.max_slices == expected and settings.max_steps_per_epoch == expected
