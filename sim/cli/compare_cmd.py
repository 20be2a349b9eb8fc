"""`simmoe compare RUN... [--where COL=VALUE] [--plot OUT.png] [--json OUT]`"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare runs side by side (replay --json results, sweep result rows)",
        description="Print the runs' latency statistics, throughput, hit rate, busy fractions, stalls and bytes "
                    "copied side by side, each against the first run (ratio; difference in points for "
                    "fractions). A run is a `replay --json` file, or a sweep table (.parquet/.csv) whose ok rows "
                    "are each a run (narrowed by --where, or FILE#KEY for one configuration). Runs of different "
                    "traces (by sha256) are compared with a warning.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="replay JSON, sweep table, or TABLE#KEY")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep sweep rows whose COLUMN equals VALUE (repeatable; e.g. policy=lru, batch=4)")
    p.add_argument("--plot", metavar="OUT.png", help="write a figure: latency statistics, throughput, hit rate, "
                                                     "busy fractions, stall breakdown")
    p.add_argument("--json", metavar="OUT", help="write the comparison as JSON ('-': stdout, instead of the table)")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simmoe.compare import compare, figure, format_table, to_dict
    from simmoe.fileio import atomic_open, check_output

    to_stdout = args.json == "-"
    if not to_stdout:
        check_output(args.json, "--json")
    if args.plot:
        from simmoe.plots import check_image_path

        check_image_path(args.plot, "--plot")
    df = compare(args.runs, where=args.where)
    for w in df.attrs["warnings"]:
        print(f"simmoe: warning: {w}", file=sys.stderr)
    if args.plot:
        from simmoe.plots import save

        save(figure(df), args.plot)
    text = json.dumps(to_dict(df), indent=2)
    if to_stdout:
        print(text)
    elif args.json:
        with atomic_open(args.json) as f:
            f.write(text + "\n")
    if not args.quiet and not to_stdout:
        print(format_table(df))
    return 0
