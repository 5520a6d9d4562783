"""samri.activelearning.config: the shipped settings parse; bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from samri.activelearning.config import load_al_config, parse_al_config
from samri.errors import SamriInputError

REPO = Path(__file__).resolve().parents[3]


def test_repo_config_parses_and_bad_values_name_their_key(tmp_path: Path) -> None:
    cfg = load_al_config(REPO / "configs" / "activelearning.yaml")
    assert cfg.slices.axis == 2 and sum(cfg.combined_weights.values()) > 0
    assert cfg.scoring_key("uncertainty") != cfg.scoring_key("novelty")
    with pytest.raises(SamriInputError, match=r"slices\.step"):
        parse_al_config({"slices": {"step": 0}})
    with pytest.raises(SamriInputError, match=r"combined\.weights"):
        parse_al_config({"combined": {"weights": {"uncertainty": 0, "novelty": 0}}})
    with pytest.raises(SamriInputError, match=r"novelty\.pooling"):
        parse_al_config({"novelty": {"pooling": "max"}})
    with pytest.raises(SamriInputError, match="file not found"):
        load_al_config(tmp_path / "missing.yaml")
