"""`simmoe calibrate`: measure this machine with PyTorch (or read measurements taken elsewhere) and write a
calibrated hardware profile.

    simmoe calibrate --model mixtral-8x7b --out hwprofiles/mybox.yaml              # GPU + PCIe + host + CPU
    simmoe calibrate --device cpu --base rtx3090 --model deepseek-v2-lite --quick --out /tmp/cpu.yaml
    simmoe calibrate --device cpu --as-device --quick --threads 4 1 --out /tmp/cpu-device.yaml
    simmoe calibrate --from hwprofiles/h100-sxm-calibrated.json --base h100-sxm --out /tmp/h100.yaml

Writes NAME.yaml (source: calibrated; `calibration.provenance` says of every figure whether it was
measured, fitted, borrowed or assumed) and NAME.json (the measurements, the format `--from` reads) beside
it. Measuring needs the torch extra (`pip install -e '.[torch]'`); `--from` does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simmoe.errors import InputError

DEFAULT_MODELS = ["mixtral-8x7b"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure this machine (GPU, PCIe, host, CPU), or fit measurements taken elsewhere, and write a "
             "calibrated hardware profile",
        description="Measure copies, expert FFN kernels, launch costs and overlap with PyTorch on this machine, "
                    "fit the profile's models with SciPy and write a profile YAML plus the measurements (JSON) "
                    "beside it; or, with --from, fit a profile from a measurements file taken on another "
                    "machine. Every figure of the profile says whether it was measured, fitted, borrowed "
                    "(from --base) or assumed (calibration.provenance).",
    )
    p.add_argument("--from", dest="from_file", metavar="MEASUREMENTS.json",
                   help="fit from this measurements file instead of measuring (no torch needed); the format "
                        "is in hwprofiles/README.md ('Measurements files')")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="cuda: GPU, PCIe, host and CPU; cpu: the CPU, its memcpy and dispatch costs (the GPU, "
                        "PCIe and host figures from --base, or the CPU itself with --as-device) (default: cuda "
                        "when torch sees a GPU, else cpu)")
    p.add_argument("--as-device", action="store_true",
                   help="with CPU measurements: describe the CPU as the compute device too (its GEMM and memory "
                        "rates, its expert tables, memcpy as the link, its dispatch cost as the launch cost)")
    p.add_argument("--model", dest="models", action="extend", nargs="+", metavar="NAME",
                   help=f"model(s) whose shapes to time: a catalog name, a Hugging Face config.json, a spec .yaml, "
                        f"or a trace (.npz) whose model to time "
                        f"(default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--quick", action="store_true",
                   help="a few sizes (copies up to 64 MiB, tokens 1..64) and repetitions: seconds, not minutes")
    p.add_argument("--base", metavar="PROFILE",
                   help="built-in profile name or YAML path to borrow what is not measured from (every borrowed "
                        "figure is listed); needed for --device cpu without --as-device, and for figures the "
                        "measurements cannot give (e.g. GPU peaks)")
    p.add_argument("--out", required=True, metavar="PATH.yaml",
                   help="profile to write; the measurements (JSON) go beside it")
    p.add_argument("--name", help="profile name (default: the output file's stem)")
    p.add_argument("--threads", type=int, nargs="+", metavar="N",
                   help="CPU thread counts to time the experts at; the first is the one the profile describes "
                        "(default: physical cores). With --from: the thread count whose tables to use (default: "
                        "the largest measured)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="time experts at token counts up to N only (default: up to 64 with --quick, else 2048)")
    p.set_defaults(func=run)


def _check_out(out: Path) -> None:
    if out.suffix not in (".yaml", ".yml"):
        raise InputError("--out", None, f"{str(out)!r} must end in .yaml or .yml")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("--out", None, f"output folder {str(folder)!r} does not exist")


def run(args: argparse.Namespace) -> int:
    from simmoe.hw.profile import load_profile
    from simmoe.models.load import load_model

    # Check everything the user gave before measuring (or fitting) anything.
    out = Path(args.out)
    _check_out(out)
    if args.threads is not None and any(t < 1 for t in args.threads):
        raise InputError("--threads", None, f"must be >= 1, got {' '.join(map(str, args.threads))}")
    if args.from_file is not None:
        # flags that only steer a measurement would be silently ignored: refuse them
        for flag, given in (("--device", args.device is not None), ("--model", bool(args.models)),
                            ("--quick", args.quick), ("--max-tokens", args.max_tokens is not None)):
            if given:
                raise InputError(flag, None, "measures nothing with --from: the measurements file says what was "
                                             "measured and on which device")
        if args.threads is not None and len(args.threads) > 1:
            raise InputError("--threads", None, "with --from, give one thread count (whose CPU tables to use)")
        base = load_profile(args.base) if args.base else None
        from simmoe.calibrate.fit import FitError
        from simmoe.calibrate.profile_writer import fit_from_file, format_summary, write_profile

        try:
            res = fit_from_file(args.from_file, name=args.name or out.stem, base=base, base_label=args.base or "",
                                as_device=args.as_device, threads=args.threads[0] if args.threads else None)
        except FitError as e:
            raise InputError(args.from_file, None, f"cannot be fitted: {e} (nothing written)") from None
        assert res.raw is not None
        paths = write_profile(res.profile, res.raw, out)
        print(format_summary(res, paths))
        return 0

    models: list = []
    for m in dict.fromkeys(args.models or DEFAULT_MODELS):  # a model (simmoe.models.load), or a trace's model
        if m.endswith(".npz"):
            from simmoe.trace.format import read_trace

            models.append(read_trace(m).spec)
        else:
            models.append(load_model(m))
    if args.max_tokens is not None and args.max_tokens < 2:
        raise InputError("--max-tokens", None, f"must be >= 2, got {args.max_tokens}")
    base = load_profile(args.base) if args.base else None
    if args.as_device and args.device == "cuda":
        raise InputError("--as-device", None, "describes the CPU as the compute device: use it with --device cpu")
    if args.device == "cpu" and base is None and not args.as_device:
        raise InputError("--base", None, "--device cpu calibrates the host of offloaded experts: give a datasheet "
                         "profile for the GPU, PCIe and host figures (e.g. --base rtx3090; they are listed as "
                         "borrowed), or --as-device to calibrate the CPU as the compute device")
    try:
        import torch
    except ImportError:
        raise InputError("torch", None, "calibration needs PyTorch: install the torch extra: "
                         "pip install -e '.[torch]'") from None
    device = args.device or ("cpu" if args.as_device or not torch.cuda.is_available() else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no GPU on this machine "
                         "(use --device cpu --base PROFILE, or --device cpu --as-device)")
    if device == "cpu" and base is None and not args.as_device:
        raise InputError("--base", None, "torch sees no GPU here, so only the CPU can be calibrated: give a "
                         "datasheet profile for the GPU, PCIe and host figures (e.g. --base rtx3090), or "
                         "--as-device to calibrate the CPU as the compute device")

    from simmoe.calibrate.fit import FitError
    from simmoe.calibrate.profile_writer import format_summary, run_calibration, write_profile

    try:
        res = run_calibration(models, device=device, quick=args.quick, base=base, base_label=args.base or "",
                              name=args.name or out.stem, threads=args.threads, progress=not args.quiet,
                              max_tokens=args.max_tokens, as_device=args.as_device)
    except FitError as e:
        # The measurements themselves could not be fitted: not bad input, but one clear line all the same.
        print(f"simmoe: error: {e} (nothing written)", file=sys.stderr)
        return 1
    assert res.raw is not None
    paths = write_profile(res.profile, res.raw, out)
    print(format_summary(res, paths))
    return 0
