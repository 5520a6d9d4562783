"""Agreement of inference backends on the same sessions (``samri evaluate --backend torch --backend X``).

A run with ``--backend`` keys its models ``MODEL[BACKEND]``. For every ``MODEL[X]`` that has a
``MODEL[torch]`` partner (PyTorch eager fp32, the reference), each session (same image, structure,
slice and first interaction) is compared click by click: the Dice difference to ground truth after
every interaction, and whether NoC@85 changed. That is the accuracy cost of serving with ``X``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

REFERENCE = "torch"
_KEY = re.compile(r"^(?P<model>.+)\[(?P<backend>[^\[\]]+)\]$")


def _session_key(row: Mapping) -> tuple:
    return row["variant"], row["image"], row["structure"], row["slice"], row["first"]


def backend_agreement(rows: Sequence[Mapping]) -> dict[str, dict[str, Any]]:
    """``{"MODEL[X]": {"reference", "sessions", "mean_dice_diff", "mean_abs_dice_diff", "max_abs_dice_diff",
    "dice_1_diff", "noc_85_changed"}}`` over the sessions both ran (empty without ``[torch]`` partners).

    Dice differences are ``X - torch`` per interaction, averaged over all interactions of all sessions
    (``dice_1_diff``: the first interaction only); ``noc_85_changed`` counts sessions whose NoC@85 differs.
    """
    by_model: dict[str, dict[tuple, Mapping]] = defaultdict(dict)
    for r in rows:
        by_model[r["model"]][_session_key(r)] = r
    out: dict[str, dict[str, Any]] = {}
    for name, sessions in by_model.items():
        match = _KEY.match(name)
        if not match or match["backend"] == REFERENCE:
            continue
        reference = f"{match['model']}[{REFERENCE}]"
        ref = by_model.get(reference)
        if not ref:
            continue
        diffs, first, changed, n = [], [], 0, 0
        for key, row in sessions.items():
            other = ref.get(key)
            if other is None:
                continue
            a, b = np.asarray(row["dice_curve"], float), np.asarray(other["dice_curve"], float)
            k = min(len(a), len(b))
            diffs.append(a[:k] - b[:k])
            first.append(float(a[0] - b[0]))
            changed += int(row["noc"].get("85") != other["noc"].get("85"))
            n += 1
        if not n:
            continue
        every = np.concatenate(diffs)
        out[name] = {"reference": reference, "sessions": n, "mean_dice_diff": round(float(every.mean()), 5),
                     "mean_abs_dice_diff": round(float(np.abs(every).mean()), 5),
                     "max_abs_dice_diff": round(float(np.abs(every).max()), 4),
                     "dice_1_diff": round(float(np.mean(first)), 5), "noc_85_changed": changed}
    return out


def agreement_lines(summary: Mapping, heading: str = "#") -> list[str]:
    """The report's table of `backend_agreement` (no lines when the run compared no backends)."""
    agreement = summary.get("backend_agreement") or {}
    if not agreement:
        return []
    lines = [f"{heading}# Backends against PyTorch eager fp32 (same sessions)", "",
             "Dice to ground truth after every interaction, this backend minus PyTorch eager fp32 (target: mean "
             "difference <= 0.005).", "",
             "| model | reference | sessions | mean Dice difference | mean abs | max abs | at the first interaction "
             "| sessions whose NoC@85 changed |", "|---|---|---|---|---|---|---|---|"]
    for name, a in agreement.items():
        lines.append(f"| {name} | {a['reference']} | {a['sessions']} | {a['mean_dice_diff']:+.5f} | "
                     f"{a['mean_abs_dice_diff']:.5f} | {a['max_abs_dice_diff']:.4f} | {a['dice_1_diff']:+.5f} | "
                     f"{a['noc_85_changed']} |")
    return lines + [""]
