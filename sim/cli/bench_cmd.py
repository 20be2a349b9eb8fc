"""`simmoe bench`: replay speed figures."""

from __future__ import annotations

import argparse
import contextlib
import sys

from simmoe.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure replay speed (activations/s, growth with trace length)")
    p.add_argument("--quick", action="store_true", help="traces a tenth of the full size")
    p.add_argument("--baseline", metavar="REV",
                   help="also run the same cases with this git revision of simmoe (e.g. HEAD~3, a tag) in a "
                        "subprocess and print the speed ratio (needs git and the repository's history)")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="best of N runs per case (default 3)")
    common.add_json(p, "the figures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simmoe.bench import run_bench
    from simmoe.errors import InputError

    common.check_json(args.json)
    if args.repeat < 1:
        raise InputError("--repeat", None, f"must be >= 1, got {args.repeat}")
    # with --json -, stdout holds the JSON alone: the figures as they come go to stderr
    with contextlib.redirect_stdout(sys.stderr if common.json_to_stdout(args) else sys.stdout):
        rows = run_bench(quick=args.quick, baseline=args.baseline, repeat=args.repeat)
    if args.json:
        common.write_json(args.json, rows)
    return 0
