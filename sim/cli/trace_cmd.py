"""`simmoe trace`: inspect, generate and import routing traces.

    simmoe trace info FILE [--json OUT] [--plot OUT.png]     statistics of a trace
    simmoe trace synth --model NAME [--preset P] ... --out T.npz
    simmoe trace synth --like T.npz [--requests N] ... --out T2.npz
    simmoe trace import --from jsonl|csv FILE... --model NAME --out T.npz

Other modules add subcommands: each module in TRACE_SUBCOMMAND_MODULES (skipped while it does not exist)
defines `register(trace_subparsers)` and sets `func(args) -> int` on its parser.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path
from typing import Any

from simmoe.cli import common
from simmoe.errors import InputError
from simmoe.fileio import atomic_path, check_output

TRACE_SUBCOMMAND_MODULES = ["simmoe.cli.trace_capture"]


# ---- info -----------------------------------------------------------------------------------------------
def _json_clean(x: Any) -> Any:
    """NaN -> null, so the output is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    return x


def plot_stats(stats: dict[str, Any], out: str | Path) -> None:
    """Two panels: the per-layer LRU hit-rate curve vs cache fraction, and per-layer popularity skew."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    fr = [100 * c["fraction"] for c in stats["lru"]]
    a.plot(fr, [100 * c["hit_rate"] for c in stats["lru"]], "o-", lw=2, label="all layers")
    per = np.array([c["per_layer_hit_rate"] for c in stats["lru"]], dtype=float)  # [fractions, L]
    a.fill_between(fr, 100 * np.nanmin(per, axis=1), 100 * np.nanmax(per, axis=1), alpha=0.2,
                   label="layer min-max")
    a.plot(fr, fr, "k:", lw=1, label="no locality (hit = fraction)")
    a.set(xlabel="cache, % of each layer's experts", ylabel="LRU hit rate, %", xlim=(0, 100), ylim=(0, 100),
          title="per-layer LRU, cold start")
    a.legend(loc="upper left", fontsize=8)
    share = 100 * np.array(stats["per_layer_top_eighth_share"], dtype=float)
    b.bar(np.arange(share.size), share, color="tab:orange")
    b.axhline(100 * stats["top_eighth_share_uniform"], color="k", ls=":", lw=1, label="uniform")
    b.set(xlabel="MoE layer", ylabel=f"% of activations on top {stats['top_eighth_experts']} experts",
          title="popularity skew per layer")
    b.legend(fontsize=8)
    fig.suptitle(f"{Path(stats['file']).name} ({stats['model']}, {stats['rows']} rows)"
                 + ("  SYNTHETIC" if stats.get("synthetic") else ""), fontsize=10)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _cmd_info(args: argparse.Namespace) -> int:
    from simmoe.trace.format import read_trace
    from simmoe.trace.stats import format_stats, trace_stats

    common.check_json(args.json)
    check_output(args.plot, "--plot")
    stats = trace_stats(read_trace(args.file))
    if not common.json_to_stdout(args):
        print(format_stats(stats))
    if args.json:
        common.write_json(args.json, _json_clean(stats), indent=1)
    if args.plot:
        plot_stats(stats, args.plot)
    return 0


# ---- synth ----------------------------------------------------------------------------------------------
_KNOBS = ("reuse", "skew", "layer_corr", "slot_shuffle")


def _cmd_synth(args: argparse.Namespace) -> int:
    from simmoe.trace.format import write_trace
    from simmoe.trace.synth import preset_params, synth_like, synth_trace

    check_output(args.out, "--out")
    knobs = {k: getattr(args, k) for k in _KNOBS if getattr(args, k) is not None}
    if args.like:
        from simmoe.trace.format import read_trace

        for opt, val in (("--preset", args.preset), ("--model", args.model), *(
                (f"--{k.replace('_', '-')}", v) for k, v in knobs.items())):
            if val is not None:
                raise InputError(opt, None, "cannot be combined with --like (the parameters are fitted)")
        original = read_trace(args.like)
        trace, fit = synth_like(original, requests=args.requests, prompt_tokens=args.prompt_tokens,
                                decode_tokens=args.decode_tokens, seed=args.seed)
        p = fit["params"]
        print(f"fitted to {args.like} in {fit['evaluations']} generator runs on {fit['sample_rows']} rows: "
              + "  ".join(f"{k}={p[k]:.3f}" for k in _KNOBS))
        print("LRU hit rate   " + "  ".join(f"{100 * t:.1f}%->{100 * g:.1f}%" for t, g in
                                            zip(fit["target"]["lru"], fit["fitted"]["lru"], strict=True))
              + f"   (max error {fit['lru_error_points']:.2f} points, at 12.5/25/50/75% cache)")
    else:
        if args.model is None:
            raise InputError("synth", "--model", "give --model NAME (or --like TRACE)")
        params = preset_params(args.preset) if args.preset else {}
        params.update(knobs)
        extra: dict[str, Any] = {}
        if args.arrival_rate is not None:
            extra["arrivals"] = args.arrival_rate
        if args.predict_accuracy is not None:
            extra["predict_accuracy"] = args.predict_accuracy
        trace = synth_trace(args.model, requests=args.requests if args.requests is not None else 4,
                            prompt_tokens=32 if args.prompt_tokens is None else args.prompt_tokens,
                            decode_tokens=128 if args.decode_tokens is None else args.decode_tokens,
                            seed=args.seed, **params, **extra)
        if args.preset:
            trace.meta["preset"] = args.preset
    write_trace(trace, args.out)
    print(f"wrote {args.out}: {trace.num_requests} requests, {trace.num_rows} rows (synthetic)")
    return 0


# ---- import ---------------------------------------------------------------------------------------------
def _cmd_import(args: argparse.Namespace) -> int:
    import numpy as np

    from simmoe.trace.format import write_trace
    from simmoe.trace.importers import import_csv, import_jsonl

    check_output(args.out, "--out")
    common = dict(model=args.model, layer_index=args.layer_index, prompt_len=args.prompt_len,
                  ignore_fields=tuple(f for f in (args.ignore_fields or "").split(",") if f))
    if args.fmt == "jsonl":
        if len(args.files) != 1:
            raise InputError("import", "FILE", f"--from jsonl takes one file, got {len(args.files)}")
        trace = import_jsonl(args.files[0], **common)
    else:
        trace = import_csv(args.files, **common)
    write_trace(trace, args.out)
    empty = (trace.experts < 0).all(axis=2)
    print(f"wrote {args.out}: {trace.num_requests} requests, {trace.num_rows} rows, {trace.num_layers} MoE "
          f"layers; {int(empty.sum())} (row, layer) gaps filled with -1")
    unlogged = np.flatnonzero(empty.all(axis=0)).tolist()
    if unlogged:
        print(f"note: {len(unlogged)} of the model's {trace.num_layers} MoE layers have no record at all "
              f"({_ranges(unlogged)}): replay runs them with no routed experts (their attention and shared "
              f"experts still count)")
    return 0


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5] -> 'layers 0-2, 5'."""
    parts: list[str] = []
    start = None
    for j, v in enumerate(idx):
        if start is None:
            start = v
        if j + 1 == len(idx) or idx[j + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return "layer" + ("s " if len(idx) > 1 else " ") + ", ".join(parts)


# ---- registration ---------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    from simmoe.trace.synth import PRESETS

    p = subparsers.add_parser("trace", help="trace statistics, synthetic traces, importers",
                              description="Inspect, generate and import simmoe-trace/1 routing traces.")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")

    info = sub.add_parser("info", help="statistics of a trace (popularity, reuse, LRU curve, predictability)",
                          description="Requests, rows, prefill/decode split, per-layer popularity skew, reuse of "
                          "the previous token's experts, per-layer LRU hit rate at 12.5/25/50/75% of each "
                          "layer's experts (cold start, requests in id order), next-layer predictability.")
    info.add_argument("file", help="simmoe-trace/1 .npz file")
    common.add_json(info, "every statistic")
    info.add_argument("--plot", metavar="OUT.png", help="draw the LRU curve and per-layer popularity (PNG)")
    info.set_defaults(func=_cmd_info)

    syn = sub.add_parser("synth", help="generate a synthetic trace (from a preset, or fitted to a trace)",
                         description="Synthetic routing (clearly labelled synthetic in the trace's meta). "
                         "--model with a --preset and/or explicit knobs, or --like TRACE to fit reuse, skew, "
                         "layer_corr and slot_shuffle to TRACE's statistics.")
    src = syn.add_mutually_exclusive_group()
    src.add_argument("--model", help="catalog model name, Hugging Face config.json or spec .yaml")
    src.add_argument("--like", metavar="TRACE", help="fit the generator to this trace's statistics")
    syn.add_argument("--preset", choices=sorted(PRESETS), help="generator parameters matching real captures")
    syn.add_argument("--requests", type=int, help="number of requests (default 4, or the --like trace's)")
    syn.add_argument("--prompt-tokens", type=int, help="prompt (prefill) rows per request (default 32)")
    syn.add_argument("--decode-tokens", type=int, help="decode rows per request (default 128)")
    syn.add_argument("--reuse", type=float, help="probability a slot keeps the previous token's expert")
    syn.add_argument("--skew", type=float, help="popularity skew: rank r has weight (r+1)^-skew")
    syn.add_argument("--layer-corr", dest="layer_corr", type=float,
                     help="probability a draw follows the previous layer's expert's successor")
    syn.add_argument("--slot-shuffle", dest="slot_shuffle", type=float,
                     help="probability a token's slots are put in random order")
    syn.add_argument("--arrival-rate", type=float, help="Poisson arrivals, requests/s (adds arrival_s)")
    syn.add_argument("--predict-accuracy", type=float, help="add a `predicted` next-layer array this accurate")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--out", required=True, metavar="T.npz")
    syn.set_defaults(func=_cmd_synth)

    imp = sub.add_parser("import", help="import JSONL or CSV routing logs into a simmoe trace",
                         description="Import routing logs (see traces/README.md for accepted fields). Missing "
                         "rows or layers become -1; bad input names the file, the field and (JSONL) the line.")
    imp.add_argument("--from", dest="fmt", choices=("jsonl", "csv"), required=True)
    imp.add_argument("files", nargs="+", metavar="FILE", help="one JSONL file, or one or more CSV files")
    imp.add_argument("--model", required=True, help="catalog model name, Hugging Face config.json or spec .yaml "
                     "(validates layer and expert ids)")
    imp.add_argument("--layer-index", choices=("moe", "model"), default="moe",
                     help="layer numbers count MoE layers from 0 (default) or the model's transformer layers")
    imp.add_argument("--prompt-len", type=int, help="prompt length for every request when the input has no "
                     "phase or prompt_len field")
    imp.add_argument("--ignore-fields", metavar="A,B", help="input fields to ignore (unknown fields are errors)")
    imp.add_argument("--out", required=True, metavar="T.npz")
    imp.set_defaults(func=_cmd_import)

    for modname in TRACE_SUBCOMMAND_MODULES:
        mod = importlib.import_module(modname)
        mod.register(sub)


if __name__ == "__main__":  # pragma: no cover
    from simmoe.cli.main import main

    sys.exit(main(["trace", *sys.argv[1:]]))
