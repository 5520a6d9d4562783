"""samri.adaptation.report: the targets met or not, and the rendered report."""

from __future__ import annotations

from samri.adaptation.report import render_adaptation, targets


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
