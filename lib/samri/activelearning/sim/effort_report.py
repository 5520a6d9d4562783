"""Report of ``samri al-effort`` (`samri.activelearning.sim.effort`): strategies by annotator clicks.

Spread and verdicts: every figure is given as mean ± standard deviation over the seeds (sample
standard deviation, ``ddof=1``). A strategy's difference to ``random`` is computed per seed (same
first study, same training seed) and called larger than the seed spread only when the mean of those
paired differences exceeds both strategies' own seed-to-seed standard deviations.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from samri.activelearning.sim.report import encoder_text

logger = logging.getLogger(__name__)

__all__ = ["compare_to_random", "render_effort", "spread", "write_effort_figure"]


def spread(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """``(mean, sd, n)`` of the values that are not None (sd None below two values)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)


def _fmt(mean: float | None, sd: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _runs(record: Mapping[str, Any], strategy: str) -> list[Mapping[str, Any]]:
    return sorted((r for r in record["runs"] if r["strategy"] == strategy), key=lambda r: r["seed"])


def _final(run: Mapping[str, Any], key: str) -> float:
    last = run["rounds"][-1]
    return float(last["clicks_so_far"]) if key == "clicks" else float(last["heldout"][key])


def _strategies(record: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["strategy"] for r in record["runs"]))


def compare_to_random(record: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """Per strategy: paired (same seed) difference to ``random`` of the final ``key`` and the verdict.

    ``key``: ``noc85`` / ``dice1`` (held-out after the last study) or ``clicks`` (annotation clicks spent).
    """
    base = {r["seed"]: _final(r, key) for r in _runs(record, "random")}
    out = {}
    for strategy in _strategies(record):
        if strategy == "random" or not base:
            continue
        runs = [r for r in _runs(record, strategy) if r["seed"] in base]
        diffs = [_final(r, key) - base[r["seed"]] for r in runs]
        mean, sd, n = spread(diffs)
        own_sd = spread([_final(r, key) for r in runs])[1]
        random_sd = spread(list(base.values()))[1]
        noise = max(s for s in (own_sd, random_sd, 0.0) if s is not None)
        out[strategy] = {"mean_diff": mean, "sd_diff": sd, "n": n, "seed_sd": noise,
                         "beyond_spread": bool(mean is not None and n > 1 and abs(mean) > noise)}
    return out


def _round_table(record: Mapping[str, Any], key: str, digits: int) -> list[str]:
    k = int(record["config"]["studies_per_run"])
    head = "| strategy | " + " | ".join(f"after {i}" for i in range(k + 1)) + " |"
    lines = [head, "|" + "---|" * (k + 2)]
    for strategy in _strategies(record):
        cells = []
        for i in range(k + 1):
            values = [(r["rounds"][i][f"{key}_so_far"] if key.startswith("clicks") else r["rounds"][i]["heldout"][key])
                      for r in _runs(record, strategy) if len(r["rounds"]) > i]
            cells.append(_fmt(*spread(values)[:2], digits))
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def _target_table(record: Mapping[str, Any]) -> list[str]:
    cfg = record["config"]
    lines = ["| strategy | seeds reaching the target | clicks spent when reached (mean ± sd of those) |",
             "|---|---|---|"]
    for strategy in _strategies(record):
        runs = _runs(record, strategy)
        reached = [r["reached_at_clicks"] for r in runs if r["reached_at"] is not None]
        lines.append(f"| {strategy} | {len(reached)} of {len(runs)} | {_fmt(*spread(reached)[:2], 0)} |")
    base = float(record["base"][cfg["target_figure"]])
    sense = "<=" if cfg["target_figure"] == "noc85" else ">="
    return [f"Target: held-out {cfg['target_figure']} {sense} {base + cfg['target_change']:.3f} (the shipped "
            f"decoder's {base:.3f} {cfg['target_change']:+g}, fixed in the config before any run).", "", *lines]


def _verdicts(record: Mapping[str, Any]) -> list[str]:
    lines = ["| strategy | vs random: held-out NoC@85 after the last study | held-out NoC@80 | held-out Dice@1 | "
             "annotation clicks spent | larger than the seed spread? |", "|---|---|---|---|---|---|"]
    figures = {key: compare_to_random(record, key) for key in ("noc85", "noc80", "dice1", "clicks")}
    for strategy in figures["noc85"]:
        cells, beyond = [], []
        for key, digits in (("noc85", 2), ("noc80", 2), ("dice1", 3), ("clicks", 0)):
            c = figures[key][strategy]
            sign = "" if c["mean_diff"] is None or c["mean_diff"] < 0 else "+"
            cells.append(f"{sign}{_fmt(c['mean_diff'], c['sd_diff'], digits)} (seed sd {c['seed_sd']:.{digits}f})")
            if c["beyond_spread"]:
                beyond.append(key)
        lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {', '.join(beyond) or 'no'} |")
    return lines


def _picks(record: Mapping[str, Any]) -> list[str]:
    lines = ["| strategy | seed | studies in order (clicks each cost) | held-out NoC@85 per study | "
             "trained rounds published |", "|---|---|---|---|---|"]
    for strategy in _strategies(record):
        for r in _runs(record, strategy):
            rounds = r["rounds"][1:]
            order = ", ".join(f"`{x['study']}` ({x['cost']['clicks']:.0f})" for x in rounds)
            nocs = " -> ".join(f"{x['heldout']['noc85']:.2f}" for x in r["rounds"])
            published = sum(bool(x["training"]["published"]) for x in rounds)
            lines.append(f"| {strategy} | {r['seed']} | {order} | {nocs} | {published} of {len(rounds)} |")
    return lines


def _training(record: Mapping[str, Any]) -> list[str]:
    rounds = {}
    for r in record["runs"]:
        for x in r["rounds"][1:]:
            rounds[(r["seed"], tuple(y["study"] for y in r["rounds"][1:x["finished"] + 1]))] = x["training"]
    walls = [t["wall_seconds"] for t in rounds.values()]
    steps = sorted({t["steps"] for t in rounds.values()})
    stage = {k: spread([t["seconds"].get(k) for t in rounds.values()])[0] for k in ("stage1", "stage2", "validation")}
    published = sum(bool(t["published"]) for t in rounds.values())
    return [f"{len(rounds)} distinct training rounds (strategies that picked alike shared them), {published} "
            f"published by the gate; steps per round {steps}; wall time per round {_fmt(*spread(walls)[:2], 0)} s "
            f"(max {max(walls):.0f} s; stage 1 {stage['stage1']:.0f} s, stage 2 {stage['stage2']:.0f} s, "
            f"validation {stage['validation']:.0f} s on average)." if walls else "No training rounds."]


def write_effort_figure(record: Mapping[str, Any], path: Path) -> Path:
    """Held-out NoC@80 and Dice@1 against annotation clicks spent: a colour per strategy, a line per seed.

    (NoC@85 is in the tables; on a domain where almost no session reaches 0.85 it is flat at the maximum.)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=110)
    panels = (("noc80", "held-out NoC@80 (box first)"), ("dice1", "held-out Dice@1 (box)"))
    for ax, (key, title) in zip(axes, panels):
        for i, strategy in enumerate(_strategies(record)):
            for j, r in enumerate(_runs(record, strategy)):
                xs = [p["clicks_so_far"] + 1.5 * i for p in r["rounds"]]  # offset: strategies that pick alike overlap
                ys = [p["heldout"][key] for p in r["rounds"]]
                ax.plot(xs, ys, "-o", color=f"C{i}", lw=1.0, ms=3, alpha=0.8, label=strategy if j == 0 else None)
        cfg = record["config"]
        if cfg["target_figure"] == key:
            ax.axhline(record["base"][key] + cfg["target_change"], color="grey", ls="--", lw=0.8, label="target")
        ax.set_xlabel("annotation clicks spent (cumulative, to Dice 0.85)")
        ax.set_ylabel(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from samri.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def render_effort(record: Mapping[str, Any], *, command: str, figure: str | None = "al_effort.png") -> str:
    """Markdown of one `run_effort` record."""
    cfg = record["config"]
    base = record["base"]
    coh = record["cohort"]
    lines = [
        "# Active learning by annotator effort (`samri al-effort`)", "",
        f"Command: `{command}`. Generated from `summary.json`; do not edit by hand.", "",
        f"- Cohort `{cfg['cohort']}`: pool (annotate) {', '.join(f'`{s}`' for s in coh['annotate'])}; held out "
        f"{', '.join(f'`{s}`' for s in coh['test'])} ({len(coh['heldout_structures'])} structures each, middle "
        f"slice, box first, {cfg['eval_max_clicks']} interactions; they never reach training or any choice).",
        f"- Model `{cfg['model']}` from its shipped decoder; strategies {', '.join(cfg['strategies'])}; seeds "
        f"{cfg['seeds']} (the seed picks the first study and seeds training); {cfg['studies_per_run']} studies "
        f"finished per run.",
        f"- A study's cost: the clicks to Dice 0.85 of {cfg['annotate_structures']} sessions (box first, at most "
        f"{cfg['annotate_max_clicks']} interactions; a session that never gets there counts the maximum) with the "
        f"decoder live at that moment. Training per finished study: the app's training.yaml with "
        f"`{dict(cfg['train'])}`, continuing from the previous decoder, kept only if the publish gate passes.",
        f"- Shipped decoder on the held-out sessions: NoC@85 {base['noc85']:.2f}, Dice@1 {base['dice1']:.3f}, "
        f"NoC@80 {base['noc80']:.2f}, Dice@{len(base['dice_at'])} {base['dice_at'][-1]:.3f} (n {base['n']} sessions).",
        f"- Image encoder: {encoder_text(record)}.",
        f"- Wall time {record.get('seconds', 0):.0f} s ({record.get('timings', {})}).", "",
        *_training(record), "",
        "## Held-out NoC@85 after each finished study (mean ± sd over seeds)", "",
        *_round_table(record, "noc85", 2), "",
        "## Held-out NoC@80", "", *_round_table(record, "noc80", 2), "",
        "## Held-out Dice@1", "", *_round_table(record, "dice1", 3), "",
        "## Annotation clicks spent so far (to Dice 0.85 per session)", "", *_round_table(record, "clicks", 0), "",
        "## The same, counted to Dice 0.80", "", *_round_table(record, "clicks80", 0), "",
    ]
    if figure:
        lines += [f"![Held-out NoC@80 and Dice@1 against annotation clicks]({figure})", ""]
    lines += ["## Clicks to the held-out target", "", *_target_table(record), "",
              "## Against MONAI Label's random, same seed (mean ± sd of the paired differences)", "",
              *_verdicts(record), "",
              "## Every run", "", *_picks(record), ""]
    return "\n".join(lines)
