"""`simmoe validate`: run a real offloaded MoE executor and the simulator on the same trace and configurations,
and report the simulator's error.

    simmoe validate --trace traces/mixtral.npz --hw hwprofiles/h100.yaml --layers 16 --batch 1 8 --out docs/validation/mixtral

Needs the torch extra (`pip install -e '.[torch]'`); torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from simmoe.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="run a real offloaded MoE executor and the simulator on a trace and report the error",
        description="Runs a real offloaded MoE executor (PyTorch; experts in pinned host memory, a device expert "
                    "cache driven by the simulator's own policy objects, real copies and kernels) over a trace "
                    "for each configuration and batch size, runs the simulator on the same trace, configurations "
                    "and profile, and writes report.md, report.json, report.png and steps.csv. Configurations: "
                    "POLICY[:k=v,...][+KIND=NAME[:k=v,...]]... with KIND prefetch, placement, precision or routing.",
    )
    p.add_argument("--trace", required=True, help="simmoe-trace/1 .npz file")
    p.add_argument("--hw", required=True, metavar="PROFILE",
                   help="profile the simulator uses (the calibrated profile of this machine; a built-in name or a "
                        "YAML path)")
    p.add_argument("--configs", nargs="+", metavar="CONFIG",
                   help="configurations (default: resident, ondemand, lru at 1/4, 1/2, 3/4 of a layer's experts, "
                        "cpu-experts, and lru 1/2 + prefetch=oracle when that policy is registered; those that do "
                        "not fit the profile's GPU memory are skipped)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], metavar="B",
                   help="decode batch sizes (default: 1 8)")
    p.add_argument("--runtime", metavar="NAME_OR_PATH",
                   help="runtime profile both sides run: the executor takes its access order, copy unit and stream, "
                        "write-back and per-expert read-backs; the simulator all of it (default: simmoe-executor, "
                        "which describes the executor's own code)")
    p.add_argument("--runtime-opt", action="append", metavar="SECTION.FIELD=VALUE",
                   help="change one field of the runtime profile (repeatable)")
    p.add_argument("--host-memory", choices=("pinned", "pageable"), default="pinned",
                   help="host memory of the offloaded experts, both sides (default pinned)")
    p.add_argument("--copy-stream", choices=("separate", "compute"),
                   help="stream expert copies go on, both sides (default: the runtime's)")
    p.add_argument("--layers", type=int, metavar="N", help="keep only the trace's first N MoE layers")
    p.add_argument("--max-requests", type=int, metavar="N", help="use only the first N requests of the trace")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="where the executor runs (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (CPU experts, --device cpu)")
    p.add_argument("--out", default="validation", metavar="DIR", help="report folder (default: ./validation)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simmoe.calibrate.validate import (
        check_host_memory,
        default_configs,
        format_markdown,
        load_inputs,
        parse_config,
        run_validation,
        write_report,
    )
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.scenario import prepare
    from simmoe.hw.profile import load_profile

    # Everything the user gave is checked before the (long) measurement starts.
    settings = [ReplayConfig(batch=b, max_requests=args.max_requests, host_memory=args.host_memory,
                             copy_stream=args.copy_stream) for b in dict.fromkeys(args.batch)]  # checks them
    for flag, v in (("--layers", args.layers), ("--threads", args.threads)):
        if v is not None and v < 1:
            raise InputError(flag, None, f"must be >= 1, got {v}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("--out", str(out), "exists and is not a folder")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError("--out", str(out), f"parent folder {str(parent)!r} does not exist")
    from simmoe.policies.config import parse_kv
    from simmoe.runtime.profile import load_runtime

    hw = load_profile(args.hw)
    overrides = parse_kv(args.runtime_opt, "--runtime-opt")
    from simmoe.calibrate.validate import EXECUTOR_RUNTIME

    runtime = load_runtime(args.runtime or EXECUTOR_RUNTIME, overrides)
    trace = load_inputs(args.trace, args.layers)
    explicit = args.configs is not None
    configs = [parse_config(c) for c in (args.configs or default_configs(trace.spec))]
    batches = list(dict.fromkeys(args.batch))
    skipped = []
    kept = []
    for c in configs:
        try:
            for cfg in settings:  # sizes the cache as the simulator will: a configuration that cannot fit fails here
                prepare(trace, hw, c.pset, cfg, runtime=runtime)
            kept.append(c)
        except InputError as e:
            if explicit:
                raise InputError(f"--configs {c.label!r}", None, e.line()) from None
            skipped.append(f"{c.label}: {e.line()}")
    check_host_memory(trace.spec, args.device or "cuda", trace.source)
    try:
        import torch
    except ImportError:
        raise InputError("torch", None, "validation needs PyTorch: install the torch extra: "
                         "pip install -e '.[torch]'") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no GPU (use --device cpu for the "
                         "tiny test mode)")
    rep = run_validation(trace, hw, kept, batches, device=device, hw_label=args.hw, threads=args.threads,
                         max_requests=args.max_requests, progress=not args.quiet,
                         runtime=runtime, host_memory=args.host_memory, copy_stream=args.copy_stream)
    rep.notes += [f"skipped (does not fit): {s}" for s in skipped]
    paths = write_report(rep, out)
    print(format_markdown(rep))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if not rep.counts_match:
        print("simmoe: error: the executor's cache decisions differ from the simulator's (see the report)",
              file=sys.stderr)
        return 1
    return 0
