"""`simmoe plan --trace T --slo tpot_p95_ms=150 [--hw a,b] [--policies lru,...] [--find-max-rate] [--json OUT]`

Exit status: 0 when some configuration meets every SLO, 1 when none does, 2 on bad input (checked before
any replay runs)."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import textwrap
from typing import Any

from simmoe.cli import common

# the Python API's parameter names (errors name them) -> this command's flags
FLAGS = {"slos": "--slo", "hws": "--hw", "policies": "--policies", "slots": "--slots", "batches": "--batch",
         "runtimes": "--runtimes", "seeds": "--seeds", "tol": "--tol", "start_rate": "--rate",
         "max_rate": "--max-rate", "trace": "--trace", "workers": "--workers", "host_memory": "--host-memory-gib"}


_DESCRIPTION = "\n\n".join(textwrap.fill(t, 100) for t in (
    "Replay a trace over hardware profiles x runtimes x policies x cache sizes x batch sizes (through the sweep "
    "runner), keep the configurations that meet every --slo, rank them by $ per million decode tokens (profile "
    "price_usd_per_hour / simulated throughput), and say for the others which constraint binds. With "
    "--find-max-rate, find per configuration the highest Poisson arrival rate that meets every SLO instead.",
    "Every SLO and option is checked before the first replay. Configurations that are the same run (a batch "
    "larger than the requests that can run at once, 'auto' reaching an explicit cache size) run once and are "
    "listed as merged.",
    "Serving runs (--rate or --find-max-rate) draw arrivals with seeds 0..N-1 (--seeds N): feasibility is judged "
    "on the MEAN over the seeds; the SLO metrics and throughput are shown with a 95% bootstrap confidence "
    "interval of that mean (scipy.stats.bootstrap).",
    "Exit status: 0 some configuration meets every SLO, 1 none does, 2 bad input."))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="cheapest hw x policy x cache x batch meeting latency SLOs, or the most load each sustains",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_DESCRIPTION)
    p.add_argument("--trace", required=True, help="simmoe-trace/1 .npz file")
    p.add_argument("--slo", action="append", required=True, metavar="METRIC=LIMIT",
                   help="tpot_p95_ms=150, ttft_p99_ms=2000 (latency percentiles mean|p50|p90|p95|p99 of "
                        "tpot|step|ttft|queue|e2e: upper bounds), or any summary metric with <= / >= "
                        "(tokens_per_s>=10); repeatable")
    p.add_argument("--rate", type=float, help="request rate (requests/s, Poisson arrivals: serving runs); with "
                                              "--find-max-rate, where the search starts (default: the closed-loop "
                                              "throughput)")
    p.add_argument("--find-max-rate", action="store_true",
                   help="per configuration, the highest arrival rate meeting every SLO (bracket, then bisection "
                        "to --tol), and its $/Mtok at that rate")
    p.add_argument("--tol", type=float, help="--find-max-rate: relative tolerance of the rate (default 0.05)")
    p.add_argument("--max-rate", type=float, help="--find-max-rate: highest rate tried (default 64x the start)")
    p.add_argument("--seeds", type=int, help="arrival seeds per serving configuration (default 1); feasibility "
                                             "on the mean, with a 95%% bootstrap CI")
    p.add_argument("--hw", help="comma-separated profiles (default: every bundled profile with a price)")
    p.add_argument("--runtimes", help="comma-separated runtime profiles to compare (default: each policy's own: the "
                                      "named system's runtime, else generic)")
    p.add_argument("--policies", help="comma-separated cache policies / systems (default: lru,ondemand,cpu-experts)")
    p.add_argument("--slots", help="comma-separated cache sizes in slots per layer for sized policies; 'auto' "
                                   "= all free GPU memory (default: E/8, E/4, E/2, auto)")
    p.add_argument("--host-memory-gib", metavar="LIST",
                   help="comma-separated GiB of host memory for experts (the SSD tier: beyond it experts are read "
                        "from NVMe; profiles with an nvme: section); 'auto' = the profile's RAM. The price follows "
                        "the RAM (README: Capacity planning)")
    p.add_argument("--batch", help="comma-separated batch sizes (default: 1,4)")
    p.add_argument("--max-requests", type=int, help="replay only the first N requests of the trace")
    p.add_argument("--requests", type=int, help="cycle the trace's requests up to N (serving runs: enough "
                                                "requests for a queue to build up above the capacity)")
    p.add_argument("--workers", type=int, help="parallel workers (default: CPU count)")
    p.add_argument("--out", help="keep the runs here (.parquet/.csv; reused when re-run)")
    common.add_json(p, "the result table and its context (with '-' the readable report goes to stderr)")
    p.add_argument("--plot", metavar="OUT.png", help="Pareto fronts: first SLO metric vs cost and vs GPU memory "
                                                     "(--find-max-rate: max rate vs cost)")
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html: a self-contained page with the plan as "
                                                   "printed, the results table, the figure, the provenance and the "
                                                   "command")
    p.add_argument("--top", type=int, default=15, help="feasible configurations listed (default 15)")
    p.set_defaults(func=run)


def _host_memory(text: str | None) -> list[float | None] | None:
    from simmoe.errors import InputError

    if text is None:
        return None
    out: list[float | None] = []
    for t in (x.strip() for x in text.split(",") if x.strip()):
        try:
            out.append(None if t == "auto" else float(t))
        except ValueError:
            raise InputError("--host-memory-gib", text, f"{t!r} is not a number of GiB or 'auto'") from None
    if not out:
        raise InputError("--host-memory-gib", text, "empty list")
    return out


def _slots(text: str | None) -> list[int | None] | None:
    from simmoe.errors import InputError

    if text is None:
        return None
    out: list[int | None] = []
    for t in (x.strip() for x in text.split(",") if x.strip()):
        if t == "auto":
            out.append(None)
            continue
        try:
            out.append(int(t))
        except ValueError:
            raise InputError("--slots", text, f"{t!r} is not an integer or 'auto'") from None
    if not out:
        raise InputError("--slots", text, "empty list")
    return out


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that would have no effect are errors."""
    from simmoe.errors import InputError

    if args.top < 1:
        raise InputError("--top", None, f"must be >= 1, got {args.top}")
    if not args.find_max_rate:
        for flag, v in (("--tol", args.tol), ("--max-rate", args.max_rate)):
            if v is not None:
                raise InputError(flag, None, "only used with --find-max-rate")
    if args.seeds is not None and args.rate is None and not args.find_max_rate:
        raise InputError("--seeds", None, "seeds are arrival draws: only used with --rate or --find-max-rate")


def run(args: argparse.Namespace) -> int:
    from simmoe.errors import InputError

    try:
        return _run(args)
    except InputError as e:  # the Python API names its parameters; say the flag
        if e.source in FLAGS:
            raise InputError(FLAGS[e.source], e.field, e.message) from None
        raise


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simmoe.errors import InputError
    from simmoe.fileio import check_output
    from simmoe.planning import _csv, check_slos, find_max_rate, max_rate_figure, plan, plan_figure
    from simmoe.plots import save

    _check_flags(args)
    base = {k: v for k, v in (("max_requests", args.max_requests), ("requests", args.requests)) if v is not None}
    slos = check_slos(args.slo, source="--slo")
    if not Path(args.trace).is_file():
        raise InputError(args.trace, None, "trace file not found")
    if args.out:
        from simmoe.sweeps.store import check_out

        check_out(args.out)
    if args.plot:
        check_output(args.plot, "--plot")
    common.check_json(args.json)
    if args.report:
        from simmoe.report import check_report_dir

        check_report_dir(args.report)
    space: dict[str, Any] = dict(
        hws=_csv(args.hw, "--hw"), policies=_csv(args.policies, "--policies"), slots=_slots(args.slots),
        batches=_csv(args.batch, "--batch", int), seeds=1 if args.seeds is None else args.seeds, base=base,
        workers=args.workers, out=args.out, runtimes=_csv(args.runtimes, "--runtimes"),
        host_memory=_host_memory(args.host_memory_gib), progress=False if args.quiet else None)
    report = sys.stderr if args.json == "-" else sys.stdout
    text = io.StringIO()  # the readable plan, printed and kept for --report
    if args.find_max_rate:
        df = find_max_rate(args.trace, slos, tol=0.05 if args.tol is None else args.tol, start_rate=args.rate,
                           max_rate=args.max_rate, **space)
        _print_max_rate(df, slos, args, text)
        figure = (lambda: max_rate_figure(df)) if args.plot or args.report else None
    else:
        df = plan(args.trace, slos, rate=args.rate, **space)
        _print_plan(df, slos, args, text)
        figure = (lambda: plan_figure(df, slos)) if args.plot or args.report else None
    n_ok = int(df["feasible"].sum())
    report.write(text.getvalue())
    fig = figure() if figure else None
    if args.plot:
        save(fig, args.plot)
        print(f"\nplot -> {args.plot}", file=report)
    if args.json:
        _write_json(df, slos, args, n_ok)
    if args.report:
        _write_report(args, df, text.getvalue(), fig)
    return 0 if n_ok else 1


def _ci(r, m: str, seeds: int) -> str:
    v = r.get(m)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    lo, hi = r.get(f"{m}.ci_low"), r.get(f"{m}.ci_high")
    if seeds > 1 and lo is not None and not math.isnan(lo):
        return f"{v:.4g} [{lo:.4g}, {hi:.4g}]"
    return f"{v:.4g}"


def _merged_lines(df, out) -> None:
    m = df[df["merged"] != ""]
    if len(m):
        from simmoe.planning import label

        print(f"\nmerged (the same run, reported once): {int((m['merged'].str.count(';') + 1).sum())} configurations",
              file=out)
        for _, r in m.iterrows():
            print(f"  {r['merged']}  =  {label(r)}   ({r['merged_why']})", file=out)


def _head(df, slos, args, mode: str, out) -> None:
    seeds = 1 if args.seeds is None else args.seeds
    print(f"simmoe plan  {args.trace}   SLO: {', '.join(map(str, slos))}", file=out)
    serving = args.rate is not None or args.find_max_rate
    if serving:
        print(f"  {mode}; Poisson arrivals, seeds {'0' if seeds == 1 else f'0..{seeds - 1}'}"
              + (": feasibility judged on the mean over the seeds, [95% bootstrap CI]" if seeds > 1 else ""),
              file=out)
    a = df.attrs
    print(f"  {a['configurations']} configurations, {a['runs']} distinct runs; replays: {a['replays_run']} run, "
          f"{a['replays_reused']} reused", file=out)


def _print_plan(ev, slos, args, out) -> None:
    from simmoe.planning import closest_infeasible, label, ranked

    seeds = 1 if args.seeds is None else args.seeds
    best = ranked(ev)
    metrics = list(dict.fromkeys(s.metric for s in slos))
    _head(ev, slos, args, f"at {args.rate:g} requests/s" if args.rate is not None else "closed loop", out)
    print(f"  {len(best)} feasible, {int((ev['status'] != 'ok').sum())} failed to run (memory or bad values), "
          f"{int(((ev['status'] == 'ok') & ~ev['feasible']).sum())} miss an SLO", file=out)
    w = 26 if seeds > 1 else 12
    if len(best):
        print(f"\nfeasible, cheapest per token first (top {min(args.top, len(best))} of {len(best)}):", file=out)
        print(f"  {'#':>3}  {'configuration':<40} {'$/Mtok':>9} {'$/h':>6} {'tok/s':>{w}} "
              + " ".join(f"{m:>{w}}" for m in metrics) + f" {'GPU GiB':>8}", file=out)
        for i, (_, r) in enumerate(best.head(args.top).iterrows(), 1):
            vals = " ".join(f"{_ci(r, m, seeds):>{w}}" for m in metrics)
            print(f"  {i:>3}  {label(r):<40} {r['usd_per_mtok']:>9.3f} {r['usd_per_hour']:>6.2f} "
                  f"{_ci(r, 'tokens_per_s', seeds):>{w}} {vals} {r['peak_gpu_mem_bytes'] / 2**30:>8.2f}", file=out)
    else:
        print("\nno configuration meets every SLO", file=out)
    near = closest_infeasible(ev)
    if len(near):
        print("\nno feasible configuration for these hw x policy pairs; the closest one and what binds it:",
              file=out)
        for _, r in near.iterrows():
            how = "" if math.isinf(r["violation"]) else f" [x{r['violation']:.2f} of the limit]"
            print(f"  {label(r):<40} {r['binding']}{how}", file=out)
    _merged_lines(ev, out)


def _print_max_rate(df, slos, args, out) -> None:
    from simmoe.planning import label, ranked_max_rate

    seeds = 1 if args.seeds is None else args.seeds
    tol = 0.05 if args.tol is None else args.tol
    _head(df, slos, args, f"highest rate meeting every SLO, to {tol:.0%}", out)
    best = ranked_max_rate(df)
    metrics = list(dict.fromkeys(s.metric for s in slos))
    w = 26 if seeds > 1 else 12
    print(f"  {len(best)} sustain some rate, {len(df) - len(best)} none", file=out)
    if len(best):
        print(f"\nmost load within the SLOs, cheapest per token at that load first (top {min(args.top, len(best))}"
              f" of {len(best)}; req/s: the highest rate found feasible, then the lowest found infeasible):",
              file=out)
        print(f"  {'#':>3}  {'configuration':<40} {'req/s':>9} {'fails at':>9} {'tok/s':>8} {'$/Mtok':>9} "
              f"{'sim tok/s':>{w}} " + " ".join(f"{m:>{w}}" for m in metrics) + f" {'replays':>7}", file=out)
        for i, (_, r) in enumerate(best.head(args.top).iterrows(), 1):
            hi = f"{r['rate_infeasible']:.4g}" if r["bounded"] else "(cap)"
            vals = " ".join(f"{_ci(r, m, seeds):>{w}}" for m in metrics)
            print(f"  {i:>3}  {label(r):<40} {r['max_rate']:>9.4g} {hi:>9} {r['tokens_per_s_offered']:>8.4g} "
                  f"{r['usd_per_mtok']:>9.3f} {_ci(r, 'tokens_per_s', seeds):>{w}} {vals} {r['replays']:>7}",
                  file=out)
        print("  tok/s: the load at that rate (rate x decode tokens per request), what $/Mtok is priced on; "
              "sim tok/s: the simulated run's throughput (it includes the drain after the last arrival)",
              file=out)
        if not best["bounded"].all():
            print("  (cap): every SLO still held at the highest rate tried (--max-rate; default 64x the start)",
                  file=out)
    bad = df[~df["feasible"]]
    if len(bad):
        print("\nno rate meets every SLO:", file=out)
        for _, r in bad.iterrows():
            print(f"  {label(r):<40} {r['binding']}", file=out)
    _merged_lines(df, out)


def _write_json(df, slos, args, n_ok: int) -> None:
    def clean(v):
        if hasattr(v, "item") and callable(v.item):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    records = [{k: clean(v) for k, v in r.items()} for r in df.to_dict("records")]
    doc = {"command": "plan", "trace": str(args.trace), "mode": "max_rate" if args.find_max_rate else "rank",
           "slos": [{"metric": s.metric, "op": s.op, "limit": s.limit} for s in slos],
           "rate": args.rate, "seeds": 1 if args.seeds is None else args.seeds,
           "feasibility": "judged on the mean over the seeds",
           **({"tol": 0.05 if args.tol is None else args.tol} if args.find_max_rate else {}),
           **{k: int(v) for k, v in df.attrs.items()}, "feasible": n_ok, "results": records}
    common.write_json(args.json, json.dumps(doc, indent=2, default=str))


def _write_report(args: argparse.Namespace, df, text: str, fig) -> None:
    from simmoe.planning import SLOTS
    from simmoe.provenance import plan_provenance
    from simmoe.report import Section, write_report

    command = getattr(args, "command_line", None)
    mode = "the most load within the SLOs" if args.find_max_rate else "the cheapest configurations meeting the SLOs"
    shown = [c for c in df.columns if not c.startswith(("policy_options.", "runtime_options.")) or c == SLOTS]
    write_report(args.report, f"simmoe plan: {args.trace}", command, plan_provenance(args.trace, df, command),
                 [Section(f"The plan: {mode}", pre=text),
                  Section("Figure", figure=fig),
                  Section("Every configuration", table=df[shown].reset_index(drop=True))])
