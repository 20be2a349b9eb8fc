"""`simmoe sweep SPEC.yaml --out results.parquet [--workers N] [--backend local|ray] [--address ADDR]`"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of replays (hw x policy x settings) into a results table",
        description="Run every configuration of a sweep spec (YAML: trace, base, grid, cases; see "
                    "simmoe.sweep.spec) and write one row per configuration. Results are appended as they "
                    "finish; re-running the same command skips configurations already done. A configuration "
                    "with bad values (e.g. a cache that does not fit) is recorded with its error.")
    p.add_argument("spec", help="sweep spec YAML")
    p.add_argument("--out", required=True, help="results table (.parquet or .csv); resumed if it exists")
    p.add_argument("--workers", type=int, help="parallel workers (default: CPU count)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--dry-run", action="store_true", help="list the configurations and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simmoe.errors import InputError
    from simmoe.sweep.runner import run_sweep
    from simmoe.sweep.spec import load_spec
    from simmoe.sweep.store import ResultStore, check_out

    check_out(args.out)
    if args.address and args.backend != "ray":
        raise InputError("--address", args.address, "only used with --backend ray")
    spec = load_spec(args.spec)
    if args.dry_run:
        done = ResultStore(args.out).done_keys()
        for cfg in spec.configs:
            mark = "done" if cfg.key in done else "todo"
            print(f"{cfg.key}  {mark}  " + "  ".join(f"{k}={v}" for k, v in cfg.params.items()))
        print(f"{len(spec)} configurations, {sum(c.key in done for c in spec.configs)} done")
        return 0
    rep = run_sweep(spec.configs, args.out, workers=args.workers, backend=args.backend, address=args.address,
                    progress=False if args.quiet else None)
    if not args.quiet:
        print(f"{rep.total} configurations: {rep.skipped} already done, ran {rep.ran} in {rep.wall_s:.1f} s "
              f"(ok {rep.ok}, error {rep.errors}, crash {rep.crashes}) -> {args.out}")
        if rep.errors or rep.crashes:
            bad = rep.results[rep.results["status"] != "ok"]
            for msg, n in bad["error"].value_counts().head(5).items():
                print(f"  {n} x {msg}")
    return 1 if rep.crashes else 0
