"""`simmoe sweep SPEC.yaml --out results.parquet [--workers N] [--backend local|ray] [--address ADDR]`"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of replays (hw x policy x settings) into a results table",
        description="Run every configuration of a sweep spec (YAML: trace, base, grid, cases; see "
                    "simmoe.sweeps.spec) and write one row per configuration. Results are appended as they "
                    "finish; re-running the same command skips configurations already done. A configuration "
                    "with bad values (e.g. a cache that does not fit) is recorded with its error.")
    p.add_argument("spec", nargs="?", help="sweep spec YAML (its JSON Schema: --schema -)")
    p.add_argument("--out", help="results table (.parquet or .csv; required); resumed if it exists")
    p.add_argument("--schema", metavar="OUT", help="write the sweep spec's JSON Schema to OUT ('-': to stdout) "
                                                   "and exit (for editors: completion and checks of spec files)")
    p.add_argument("--workers", type=int, help="parallel workers (default: CPU count)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--dry-run", action="store_true", help="list the configurations and exit")
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html: a self-contained page with the results "
                                                   "table, a throughput vs p90 TPOT figure, the provenance and the "
                                                   "command")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from simmoe.errors import InputError
    from simmoe.sweeps.runner import run_sweep
    from simmoe.sweeps.spec import load_spec
    from simmoe.sweeps.store import ResultStore, check_out

    if args.schema is not None:
        return _write_schema(args)
    if args.spec is None or args.out is None:
        raise InputError("sweep", "--out" if args.spec else "SPEC", "give a sweep spec and --out (or --schema OUT)")
    check_out(args.out)
    if args.report:
        from simmoe.report import check_report_dir

        if args.dry_run:
            raise InputError("--report", args.report, "not written by --dry-run (nothing is run)")
        check_report_dir(args.report)
    if args.address and args.backend != "ray":
        raise InputError("--address", args.address, "only used with --backend ray")
    spec = load_spec(args.spec)
    keys = {c.key for c in spec.configs}
    if args.dry_run:
        store = ResultStore(args.out)
        done = store.done_keys()
        for cfg in spec.configs:
            mark = "done" if cfg.key in done else "todo"
            print(f"{cfg.key}  {mark}  " + "  ".join(f"{k}={v}" for k, v in cfg.params.items()))
        print(f"{len(spec)} configurations, {sum(c.key in done for c in spec.configs)} done")
        _note_others(len(set(store.records) - keys), args.out)
        return 0
    rep = run_sweep(spec.configs, args.out, workers=args.workers, backend=args.backend, address=args.address,
                    progress=not args.quiet)
    mine = rep.results[rep.results["key"].isin(keys)]
    if not args.quiet:
        print(f"{rep.total} configurations: {rep.skipped} already done, ran {rep.ran} in {rep.wall_s:.1f} s "
              f"(ok {rep.ok}, error {rep.errors}, crash {rep.crashes}) -> {args.out}")
        bad = mine[mine["status"] != "ok"]
        if len(bad):
            for msg, n in bad["error"].value_counts().head(5).items():
                print(f"  {n} x {msg}")
    _note_others(len(rep.results) - len(mine), args.out)
    if args.report:
        from simmoe.provenance import sweep_provenance
        from simmoe.report import sweep_sections, write_report

        command = getattr(args, "command_line", None)
        write_report(args.report, f"simmoe sweep: {args.spec}", command,
                     sweep_provenance(args.spec, mine, command), sweep_sections(mine.reset_index(drop=True)))
    if rep.crashes:
        return 1
    if len(mine) and not (mine["status"] == "ok").any():  # recorded, but nothing to show for it
        raise InputError(args.spec, None, f"every configuration failed ({len(mine)}, recorded in {args.out}); "
                                          f"the first: {mine.get('error', pd.Series(['?'])).iloc[0]}")
    return 0


def _note_others(n: int, out: str) -> None:
    """Rows of configurations that are not in this spec (an earlier, larger spec wrote them) stay in the
    table: say so, since load_results(out) returns them too."""
    if n:
        log.warning(f"{out} also holds {n} configuration{'s' if n > 1 else ''} from earlier runs that this spec "
                    "does not list (kept, and load_results returns them too; use another --out to keep runs apart)")


def _write_schema(args: argparse.Namespace) -> int:
    from simmoe.cli import common
    from simmoe.errors import InputError
    from simmoe.sweeps.schema import spec_schema

    given = [f for f, v in (("SPEC", args.spec), ("--out", args.out), ("--dry-run", args.dry_run),
                            ("--workers", args.workers), ("--address", args.address)) if v]
    if given:
        raise InputError("--schema", None, f"writes the schema and runs nothing: {given[0]} would have no effect")
    common.check_json(args.schema, "--schema")
    common.write_json(args.schema, spec_schema())
    return 0
