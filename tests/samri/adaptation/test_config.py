"""samri.adaptation.config: the shipped ``adapt-sim`` settings load; bad fields are named."""

from __future__ import annotations

import pytest

from samri.adaptation.config import AdaptConfig, load_adapt_config
from samri.errors import SamriInputError


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
