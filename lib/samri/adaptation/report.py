"""docs/ADAPTATION.md from an ``samri adapt-sim`` ``summary.json``: ``python -m samri.adaptation.report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from samri.io import write_text

__all__ = ["render_adaptation", "targets"]


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _change(new: float, old: float) -> str:
    return "-" if not old else f"{100.0 * (new - old) / old:+.0f} %"


def _figures_table(rounds: Sequence[Mapping], part: str, firsts: Sequence[str]) -> list[str]:
    head = "| studies finished | decoder | " + " | ".join(
        f"{f} Dice@1 | {f} Dice@5 | {f} NoC@85 (change) | {f} fail@85 | {f} s to 0.85" for f in firsts) + " |"
    lines = [head, "|" + "---|" * (2 + 5 * len(firsts))]
    base = rounds[0][part]["headline"]
    for r in rounds:
        if part not in r:
            continue
        h = r[part]["headline"]
        cells = []
        for f in firsts:
            s, b = h.get(f, {}), base.get(f, {})
            cells += [_f(s.get("dice1")), _f(s.get("dice5")),
                      f"{_f(s.get('noc85'), 2)} ({_change(s.get('noc85', 0), b.get('noc85', 0))})",
                      _f(s.get("fail85")), _f(s.get("seconds85"), 1)]
        lines.append(f"| {r['studies']} | {r[part]['decoder']} | " + " | ".join(cells) + " |")
    return lines


def _training_table(rounds: Sequence[Mapping]) -> list[str]:
    lines = ["| after studies | published | live | steps | new slices | stage 1 s | stage 2 s | validation s | "
             "round wall s | val score live -> new |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rounds[1:]:
        t = r["training"]
        sec, budget = t.get("seconds") or {}, t.get("budget") or {}
        lines.append(f"| {r['studies']} | {t.get('published')} | {t.get('live')} | {budget.get('steps', '-')} | "
                     f"{t.get('slices_encoded', '-')} | {_f(sec.get('stage1'), 0)} | {_f(sec.get('stage2'), 0)} | "
                     f"{_f(sec.get('validation'), 0)} | {_f(t.get('wall_seconds'), 0)} | "
                     f"{_f(t.get('baseline_val_score'))} -> {_f(t.get('val_score'))} |")
    return lines


def _effort_table(rounds: Sequence[Mapping], first: str) -> list[str]:
    lines = [f"| study | decoder live while annotating | sessions | {first} Dice@1 | NoC@85 | fail@85 |",
             "|---|---|---|---|---|---|"]
    for r in rounds[1:]:
        for a in r.get("annotated", []):
            h = a["headline"].get(first, {})
            lines.append(f"| {a['study']} | {a['decoder']} | {h.get('n')} | {_f(h.get('dice1'))} | "
                         f"{_f(h.get('noc85'), 2)} | {_f(h.get('fail85'))} |")
    return lines


def targets(record: Mapping[str, Any]) -> list[str]:
    """The issue's targets, each with the measured figure and met / not met."""
    rounds = {r["studies"]: r for r in record["rounds"]}
    base = rounds[0]
    out = []

    def noc(r, f):
        return r["heldout"]["headline"].get(f, {}).get("noc85")

    for k, aim in ((3, 0.40), (5, 0.50)):
        if k in rounds:
            for f in ("box", "point"):
                if noc(base, f):
                    cut = 1 - noc(rounds[k], f) / noc(base, f)
                    out.append(f"- held-out NoC@85 ({f} first) after {k} studies: {100 * cut:.0f} % lower "
                               f"(aim >= {100 * aim:.0f} %): {'met' if cut >= aim else 'not met'}")
    if 3 in rounds:
        for f in ("box", "point"):
            d0, d3 = (r["heldout"]["headline"].get(f, {}).get("dice1") for r in (base, rounds[3]))
            if d0 is not None and d3 is not None:
                out.append(f"- held-out Dice@1 ({f} first) after 3 studies: {d3 - d0:+.3f} (aim >= +0.10): "
                           f"{'met' if d3 - d0 >= 0.10 else 'not met'}")
    last = record["rounds"][-1]
    if "original" in base and "original" in last:
        for f in ("box", "point"):
            b, e = base["original"]["headline"].get(f, {}), last["original"]["headline"].get(f, {})
            if b and e:
                dd, dn = e["dice1"] - b["dice1"], e["noc85"] - b["noc85"]
                ok = dd >= -0.01 and dn <= 0.2
                out.append(f"- original domain ({f} first) after {last['studies']} studies: Dice@1 {dd:+.3f}, "
                           f"NoC@85 {dn:+.2f} (aim: >= -0.01, <= +0.2): {'met' if ok else 'not met'}")
    return out


def _extra_table(rounds: Sequence[Mapping], extra: Mapping[str, Mapping], firsts: Sequence[str]) -> list[str]:
    """Decoders measured afterwards on the same held-out sessions (`samri.adaptation.measure_decoder`)."""
    rows = [{"studies": f"round {r['studies']}", "heldout": r["heldout"]} for r in rounds]
    rows += [{"studies": f"`{name}`", "heldout": {**entry, "decoder": Path(str(entry.get("decoder"))).name
                                                  + ("" if entry.get("click_fill", True) else ", no click fill")}}
             for name, entry in sorted(extra.items())]
    lines = _figures_table(rows, "heldout", firsts)
    return ["| measured | " + lines[0].split(" | ", 1)[1]] + lines[1:]


def render_adaptation(record: Mapping[str, Any], *, command: str = "make adapt-sim", preamble: str = "",
                      extra: Mapping[str, Mapping] | None = None) -> str:
    """The report's markdown; ``extra``: ``{name: measure_decoder's result}`` shown beside the rounds."""
    cfg, rounds = record["config"], record["rounds"]
    firsts = cfg["eval_first"]
    parts = [preamble.rstrip() + "\n" if preamble else "# Adaptation: fewer clicks after finished studies\n",
             f"Generated by `{command}` from `summary.json`; config: `{json.dumps(cfg)}`.\n",
             f"Held-out studies: {', '.join(record['heldout'])}; {len(record['heldout_structures'])} structures "
             f"(middle slice each). Studies finished, in order: {', '.join(record['annotate'])}.\n",
             "## Targets\n", *targets(record), "",
             "## Held-out studies of the new domain (clicks protocol, 2D)\n",
             *_figures_table(rounds, "heldout", firsts)]
    if "original" in rounds[0]:
        parts += ["", "## Original domain (the EVALUATION.md test split, same protocol)\n",
                  *_figures_table(rounds, "original", firsts)]
    parts += ["", "## Training rounds (`POST /train/samri` on every finished study so far)\n", *_training_table(rounds),
              "", "## Effort of the annotator on each study, with the decoder live at that moment\n",
              *_effort_table(rounds, cfg["annotate_first"]), ""]
    if extra:
        parts += ["## Other decoders on the same held-out sessions "
                  "(`python -m samri.adaptation.measure_decoder RUN --decoder FILE --name NAME`)\n",
                  *_extra_table(rounds, extra, firsts), ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run", type=Path, help="adapt-sim output folder (holds summary.json)")
    p.add_argument("--doc", type=Path, required=True, help="markdown file to write")
    p.add_argument("--preamble", type=Path, default=None, help="markdown put first")
    p.add_argument("--command", default="make adapt-sim")
    args = p.parse_args(argv)
    record = json.loads((args.run / "summary.json").read_text())
    preamble = args.preamble.read_text() if args.preamble else ""
    extra = {p.stem: json.loads(p.read_text()) for p in sorted((args.run / "extra").glob("*.json"))}
    write_text(args.doc, render_adaptation(record, command=args.command, preamble=preamble, extra=extra))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
