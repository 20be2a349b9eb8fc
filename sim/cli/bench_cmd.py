"""`simmoe bench`: replay speed figures."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure replay speed (activations/s, growth with trace length)")
    p.add_argument("--quick", action="store_true", help="traces a tenth of the full size")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from simmoe.bench import run_bench
    from simmoe.fileio import atomic_open, check_output

    check_output(args.json, "--json")
    rows = run_bench(quick=args.quick)
    if args.json:
        with atomic_open(args.json) as f:
            json.dump(rows, f, indent=2)
    return 0
