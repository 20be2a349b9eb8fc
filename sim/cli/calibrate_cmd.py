"""`simmoe calibrate`: measure this machine with PyTorch and write a calibrated hardware profile.

    simmoe calibrate --model mixtral-8x7b --out hwprofiles/mybox.yaml              # GPU + PCIe + host + CPU
    simmoe calibrate --device cpu --base rtx3090 --model deepseek-v2-lite --quick --out /tmp/cpu.yaml

Writes NAME.yaml (source: calibrated) and NAME.csv (raw measurements) beside it. Needs the torch extra
(`pip install -e '.[torch]'`); torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simmoe.errors import InputError

DEFAULT_MODELS = ["mixtral-8x7b"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure this machine (GPU, PCIe, host, CPU) and write a calibrated hardware profile",
        description="Measure copies, expert FFN kernels, launch costs and overlap with PyTorch on this machine, "
                    "fit the profile's models with SciPy and write a profile YAML plus a CSV of the raw "
                    "measurements. On a machine without a GPU use --device cpu with --base: only the CPU part "
                    "is measured.",
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="cuda: GPU, PCIe, host and CPU; cpu: the CPU only, the rest from --base "
                        "(default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--model", dest="models", action="extend", nargs="+", metavar="NAME",
                   help=f"catalog model(s) whose expert shape to time (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--quick", action="store_true",
                   help="a few sizes (copies up to 64 MiB, tokens 1..64) and repetitions: seconds, not minutes")
    p.add_argument("--base", metavar="PROFILE",
                   help="built-in profile name or YAML path supplying what is not measured (required for "
                        "--device cpu; for cuda it supplies datasheet GPU peaks)")
    p.add_argument("--out", required=True, metavar="PATH.yaml", help="profile to write; the CSV goes beside it")
    p.add_argument("--name", help="profile name (default: the output file's stem)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for CPU timings (default: physical cores)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="time experts at token counts up to N only (default: up to 64 with --quick, else 2048)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simmoe.hw.profile import load_profile
    from simmoe.models import get_model

    # Check everything the user gave before measuring anything.
    out = Path(args.out)
    if out.suffix not in (".yaml", ".yml"):
        raise InputError("--out", None, f"{str(out)!r} must end in .yaml or .yml")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("--out", None, f"output folder {str(folder)!r} does not exist")
    models = list(dict.fromkeys(args.models or DEFAULT_MODELS))
    for m in models:
        get_model(m, source="--model")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise InputError("--max-tokens", None, f"must be >= 2, got {args.max_tokens}")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads", None, f"must be >= 1, got {args.threads}")
    base = load_profile(args.base) if args.base else None
    if args.device == "cpu" and base is None:
        raise InputError("--base", None, "no GPU is calibrated with --device cpu: give a datasheet profile "
                         "for the GPU, PCIe and host figures (e.g. --base rtx3090)")
    try:
        import torch
    except ImportError:
        raise InputError("torch", None, "calibration needs PyTorch: install the torch extra: "
                         "pip install -e '.[torch]'") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no GPU on this machine "
                         "(use --device cpu --base PROFILE to calibrate the CPU part)")
    if device == "cpu" and base is None:
        raise InputError("--base", None, "torch sees no GPU here, so only the CPU can be calibrated: give a "
                         "datasheet profile for the GPU, PCIe and host figures (e.g. --base rtx3090)")

    from simmoe.calibrate.fit import FitError
    from simmoe.calibrate.profile_writer import format_summary, run_calibration, write_profile

    try:
        res = run_calibration(models, device=device, quick=args.quick, base=base,
                              base_label=args.base or "", name=args.name or out.stem, threads=args.threads,
                              progress=not args.no_progress, max_tokens=args.max_tokens)
    except FitError as e:
        # The measurements themselves could not be fitted: not bad input, but one clear line all the same.
        import sys

        print(f"simmoe: error: {e} (nothing written)", file=sys.stderr)
        return 1
    paths = write_profile(res.profile, res.measurements, out)
    print(format_summary(res, paths))
    return 0
