"""``samri adapt-sim``: registered in `samri.cli` with ``add_adapt_parser(sub)``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_adapt_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("adapt-sim", help="adaptation experiment: finish studies of a new domain through the "
                                                "server, train after each round, measure clicks on held-out studies")
    p.add_argument("--config", type=Path, default=None, help="YAML (default configs/adaptation.yaml)")
    p.add_argument("--cohort", default=None, help="samri cohort folder (overrides the config's)")
    p.add_argument("--rounds", default=None, help="comma list of finished-study counts, e.g. 1,3,5")
    p.add_argument("--out", type=Path, required=True, help="output folder (summary.json, rounds/, server.log)")
    p.add_argument("--doc", type=Path, default=None, help="also write this markdown report (docs/ADAPTATION.md)")
    p.add_argument("--preamble", type=Path, default=None, help="markdown put first in --doc")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_adapt_sim)
    return p


def cmd_adapt_sim(args: argparse.Namespace) -> int:
    from samri.adaptation.config import load_adapt_config
    from samri.adaptation.experiment import run_adaptation
    from samri.adaptation.report import render_adaptation
    from samri.io import write_text

    cfg = load_adapt_config(args.config, cohort=args.cohort, rounds=args.rounds)
    record = run_adaptation(cfg, args.out, progress=not args.no_progress,
                            on_round=lambda r: print(json.dumps({"studies": r["studies"],
                                                                 "heldout": r["heldout"]["headline"]})))
    if args.doc:
        preamble = args.preamble.read_text() if args.preamble else ""
        write_text(args.doc, render_adaptation(record, preamble=preamble))
        print(f"wrote {args.doc}")
    print(f"wrote {args.out / 'summary.json'}")
    return 0
