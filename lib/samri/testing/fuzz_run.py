"""Sending `samri.testing.fuzz` cases to a live server and judging the answers.

``python -m samri.testing.fuzz_run --url http://127.0.0.1:8000 --image colin27_t1 --shape 181 217 181
--count 2000`` prints the status counts and every problem (exit status 1 if any).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from samri.testing.fuzz import FuzzCase, Target, generate


@dataclass
class Outcome:
    """What the server answered to one case."""

    case: FuzzCase
    status: int | None
    detail: str
    seconds: float

    def problem(self) -> str | None:
        """Why this answer breaks the suite's rules, or None: no answer, a 5xx, a 4xx naming no field,
        or a 2xx for a request that cannot be valid."""
        if self.status is None:
            return f"no answer ({self.detail})"
        if self.status >= 500:
            return f"HTTP {self.status}: {self.detail[:300]}"
        if 400 <= self.status < 500:
            if self.case.fields and not any(f in self.detail for f in self.case.fields):
                return f"HTTP {self.status} names none of {list(self.case.fields)}: {self.detail[:300]}"
            return None
        if not self.case.may_succeed:
            return f"HTTP {self.status} for an invalid request"
        return None


def send(session, base_url: str, case: FuzzCase, timeout_s: float = 120.0) -> Outcome:
    """Send one case with a ``requests.Session``; a timeout or a dropped connection is an `Outcome` too."""
    import time

    import requests

    start = time.perf_counter()
    try:
        # one connection per case: an answer given before a body was read closes its connection, and
        # the next case must not inherit that
        resp = session.request(case.method, base_url + case.path, params=case.query, data=case.data,
                               files=case.files, json=case.json_body, timeout=timeout_s,
                               headers={"Connection": "close"})
    except requests.RequestException as exc:
        return Outcome(case, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    detail = resp.text if resp.status_code >= 400 else ""
    return Outcome(case, resp.status_code, detail, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """CLI: run ``--count`` cases against ``--url`` and print the status counts and every problem."""
    import argparse
    import collections

    import requests

    parser = argparse.ArgumentParser(prog="python -m samri.testing.fuzz", description=main.__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True, help="a datastore image id")
    parser.add_argument("--shape", type=int, nargs=3, required=True, metavar=("X", "Y", "Z"))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    statuses: collections.Counter[int | None] = collections.Counter()
    problems = []
    with requests.Session() as session:
        for case in generate(Target(args.image, tuple(args.shape)), args.count, seed=args.seed):
            outcome = send(session, args.url.rstrip("/"), case)
            statuses[outcome.status] += 1
            if outcome.problem():
                problems.append(f"{case.name}: {outcome.problem()}")
    print(json.dumps({"count": args.count, "seed": args.seed, "statuses": {str(k): v for k, v in statuses.items()},
                      "problems": len(problems)}, indent=1))
    for line in problems:
        print(line)
    return 1 if problems else 0


__all__ = ["Outcome", "main", "send"]


if __name__ == "__main__":
    raise SystemExit(main())
