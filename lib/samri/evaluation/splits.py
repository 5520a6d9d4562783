"""The validation cohort's structures: atlas structures of the test split's kind, never a test structure.

The recipe's validation structures (Colin27 AAL, `samri.train.recipe.split_validation_labels`) are deep
grey and cortical areas of the training image. The test split (`make test-split`) scores JHU white-matter
tracts and Harvard-Oxford areas on deformed MNI152 subjects, shapes the AAL set lacks (long tracts,
thin cortical ribbons). The validation cohort (`make val-split`: the same generator, another seed) is
scored on structures of that kind, picked here by a fixed rule so that no choice looks at any result:

- a structure is out when it, or its other-hemisphere twin, is one of the test structures;
- the remaining structure names are grouped by side-less name and sorted; every ``jhu_step``-th JHU group
  and every ``ho_step``-th Harvard-Oxford group is taken, starting with the first;
- from the k-th taken group of an atlas, the left member when k is even, the right when it is odd (the
  side-less member when there is no side), so both hemispheres are represented.

Run ``python -m samri.evaluation.splits LABEL_NAMES_JSON --exclude A,B,...`` to print the list.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable, Mapping

from samri.errors import SamriInputError
from samri.labels import side_less


def cohort_validation_structures(names: Iterable[str], test_structures: Iterable[str], *,
                                 jhu_step: int = 3, ho_step: int = 6) -> list[str]:
    """The validation structures among a cohort's ``names`` (module rule), JHU first, then Harvard-Oxford.

    Raises `SamriInputError` when a step is below 1.
    """
    for field, step in (("jhu_step", jhu_step), ("ho_step", ho_step)):
        if step < 1:
            raise SamriInputError(field, step, "must be at least 1")
    available = set(names)
    excluded = {side_less(n) for n in test_structures}
    groups = sorted({side_less(n) for n in available} - excluded)
    picked: list[str] = []
    for prefix, step in (("jhu_", jhu_step), ("ho_", ho_step)):
        for k, group in enumerate([g for g in groups if g.startswith(prefix)][::step]):
            order = ("_l", "_r", "") if k % 2 == 0 else ("_r", "_l", "")
            picked.append(next(group + s for s in order if group + s in available))
    return picked


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label_names", type=Path, help="the cohort's label_names.json")
    parser.add_argument("--exclude", default="", help="comma list: the test structures")
    parser.add_argument("--jhu-step", type=int, default=3)
    parser.add_argument("--ho-step", type=int, default=6)
    args = parser.parse_args(argv)
    per_study: Mapping[str, Mapping[str, int]] = json.loads(args.label_names.read_text())
    names = set().union(*(set(m) for m in per_study.values())) if per_study else set()
    exclude = [n for n in args.exclude.split(",") if n]
    print(",".join(cohort_validation_structures(names, exclude, jhu_step=args.jhu_step,
                                                ho_step=args.ho_step)))


if __name__ == "__main__":
    _main()
