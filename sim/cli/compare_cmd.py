"""`simmoe compare RUN... [--where COL=VALUE] [--plot OUT.png] [--json OUT]`"""

from __future__ import annotations

import argparse

from simmoe.cli import common


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
    common.add_json(p, "the comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simmoe.comparison import compare, figure, format_table, to_dict
    from simmoe.errors import warn

    common.check_json(args.json)
    if args.plot:
        from simmoe.plots import check_image_path

        check_image_path(args.plot, "--plot")
    df = compare(args.runs, where=args.where)
    for w in df.attrs["warnings"]:
        warn(w)
    if args.plot:
        from simmoe.plots import save

        save(figure(df), args.plot)
    if args.json:
        common.write_json(args.json, to_dict(df))
    if not args.quiet and not common.json_to_stdout(args):
        print(format_table(df))
    return 0
