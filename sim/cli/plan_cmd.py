"""`simmoe plan --trace T --slo tpot_p90_ms=150 [--hw a,b] [--policies lru,...] [--plot OUT.png]`"""

from __future__ import annotations

import argparse
import math


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="cheapest hw x policy x cache x batch meeting latency SLOs",
        description="Replay a trace over hardware profiles x policies x cache sizes x batch sizes (through the "
                    "sweep runner), keep the configurations that meet every --slo, rank them by $ per million "
                    "decode tokens (profile price_usd_per_hour / simulated throughput), and say for the "
                    "others which constraint binds.")
    p.add_argument("--trace", required=True, help="simmoe-trace/1 .npz file")
    p.add_argument("--slo", action="append", required=True, metavar="METRIC=LIMIT",
                   help="tpot_p90_ms=150, ttft_p99_ms=2000 (upper bounds), or any summary key with <= / >= "
                        "(tokens_per_s>=10); repeatable")
    p.add_argument("--rate", type=float, help="request rate (requests/s, Poisson arrivals; needs the serving "
                                              "engine's open-loop arrivals)")
    p.add_argument("--hw", help="comma-separated profiles (default: every bundled profile with a price)")
    p.add_argument("--runtimes", help="comma-separated runtime profiles to compare (default: each policy's own: the "
                                      "named system's runtime, else generic)")
    p.add_argument("--policies", help="comma-separated cache policies / systems (default: lru,ondemand,cpu-experts)")
    p.add_argument("--slots", help="comma-separated cache sizes in slots per layer for sized policies; 'auto' "
                                   "= all free GPU memory (default: E/8, E/4, E/2, auto)")
    p.add_argument("--batch", help="comma-separated batch sizes (default: 1,4)")
    p.add_argument("--max-requests", type=int, help="replay only the first N requests of the trace")
    p.add_argument("--workers", type=int, help="parallel workers (default: CPU count)")
    p.add_argument("--out", help="keep the sweep results here (.parquet/.csv; resumed when re-run)")
    p.add_argument("--plot", metavar="OUT.png", help="Pareto fronts: first SLO metric vs cost and vs GPU memory")
    p.add_argument("--top", type=int, default=15, help="feasible configurations listed (default 15)")
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simmoe.errors import InputError
    from simmoe.fileio import check_output
    from simmoe.planning import _csv, closest_infeasible, label, parse_slo, plan, plot, ranked
    from simmoe.sweeps.store import check_out

    slos = [parse_slo(s) for s in args.slo]
    if args.top < 1:
        raise InputError("--top", None, f"must be >= 1, got {args.top}")
    if not Path(args.trace).is_file():
        raise InputError(args.trace, None, "trace file not found")
    if args.out:
        check_out(args.out)
    if args.plot:
        check_output(args.plot, "--plot")
    base = {} if args.max_requests is None else {"max_requests": args.max_requests}
    ev = plan(args.trace, slos, hws=_csv(args.hw, "--hw"), policies=_csv(args.policies, "--policies"),
              slots=_slots(args.slots), batches=_csv(args.batch, "--batch", int), rate=args.rate, base=base,
              workers=args.workers, out=args.out, runtimes=_csv(args.runtimes, "--runtimes"), progress=not args.quiet)
    best = ranked(ev)
    metrics = list(dict.fromkeys(s.metric for s in slos))
    print(f"simmoe plan  {args.trace}   SLO: {', '.join(f'{s.metric} {s.op} {s.limit:g}' for s in slos)}")
    print(f"  {len(ev)} configurations: {len(best)} feasible, {int((ev['status'] != 'ok').sum())} failed to run "
          f"(memory or bad values), {int(((ev['status'] == 'ok') & ~ev['feasible']).sum())} miss an SLO")
    if len(best):
        print(f"\nfeasible, cheapest per token first (top {min(args.top, len(best))} of {len(best)}):")
        hdr = f"  {'#':>3}  {'configuration':<40} {'$/Mtok':>9} {'$/h':>6} {'tok/s':>8} " + \
              " ".join(f"{m:>12}" for m in metrics) + f" {'GPU GiB':>8}"
        print(hdr)
        for i, (_, r) in enumerate(best.head(args.top).iterrows(), 1):
            vals = " ".join(f"{r[m]:>12.4g}" for m in metrics)
            print(f"  {i:>3}  {label(r):<40} {r['usd_per_mtok']:>9.3f} {r['usd_per_hour']:>6.2f} "
                  f"{r['tokens_per_s']:>8.2f} {vals} {r['peak_gpu_mem_bytes'] / 2**30:>8.2f}")
    else:
        print("\nno configuration meets every SLO")
    near = closest_infeasible(ev)
    if len(near):
        print("\nno feasible configuration for these hw x policy pairs; the closest one and what binds it:")
        for _, r in near.iterrows():
            how = "" if math.isinf(r["violation"]) else f" [x{r['violation']:.2f} of the limit]"
            print(f"  {label(r):<40} {r['binding']}{how}")
    if args.plot:
        plot(ev, slos, args.plot)
        print(f"\nplot -> {args.plot}")
    return 0
