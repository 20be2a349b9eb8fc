"""`simmoe trace capture`: record a routing trace from a local Hugging Face transformers MoE model.

    simmoe trace capture --model DIR --prompts FILE --out T.npz [--max-new-tokens N] [--dtype fp32|bf16|fp16]
                         [--device cpu|cuda] [--predict] [--ignore-eos] [--name NAME] [--threads N]
                         [--extra-meta FILE.json]

`register(trace_subparsers)` adds the subcommand to the `simmoe trace` group; `main(argv)` runs it alone
(`python -m simmoe.cli.trace_capture ...`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from simmoe.errors import InputError

HELP = "record a routing trace from a local transformers MoE model (greedy decoding, batch 1)"
DESCRIPTION = (
    "Runs each prompt through a local Hugging Face transformers MoE model (no downloads) with greedy "
    "decoding and records, per token row and MoE layer, the router's top-k expert ids and gate weights for "
    "the prompt (prefill rows) and every generated token fed back (decode rows). Supported: Mixtral, "
    "Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3, GPT-OSS, Switch Transformer. Prompts: a .jsonl file of "
    '{"prompt": ...} objects or JSON strings, or any other text file with one prompt per line. '
    "Needs the capture extra (torch, transformers >= 5)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="local model folder (config.json, weights, tokenizer)")
    p.add_argument("--prompts", required=True, metavar="FILE", help="prompts file (.jsonl or one per line)")
    p.add_argument("--out", required=True, metavar="T.npz", help="trace file to write")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate per prompt")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="weights/activations dtype")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--predict", action="store_true",
                   help="also store `predicted`: the experts layer l+1's router picks from layer l's input")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--name", help="model name in the trace's model_spec (default: the folder name)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (results are bit-identical only for the same count)")
    p.add_argument("--extra-meta", metavar="FILE.json",
                   help="JSON object stored in the trace's meta as 'extra' (e.g. how the model was trained)")


def run(args: argparse.Namespace) -> int:
    from simmoe.fileio import check_output

    check_output(args.out, "--out")
    try:
        from simmoe.capture import capture
    except ImportError as e:  # torch missing
        raise InputError("capture", None, f"needs the capture extra (pip install 'simmoe[capture]'): {e}") from None
    from simmoe.trace.format import write_trace

    res = capture(model_path=args.model, prompts_path=args.prompts, max_new_tokens=args.max_new_tokens,
                  dtype=args.dtype, device=args.device, predict=args.predict, ignore_eos=args.ignore_eos,
                  name=args.name, progress=not args.quiet, threads=args.threads,
                  extra_meta=args.extra_meta)
    write_trace(res.trace, args.out)
    t = res.trace
    info = t.meta["capture"]
    print(f"wrote {args.out}: {t.num_requests} requests, {t.num_rows} rows ({info['prefill_rows']} prefill, "
          f"{info['decode_rows']} decode), {t.num_layers} MoE layers, top-{t.top_k} of {t.spec.num_experts}")
    return 0


def register(trace_subparsers: argparse._SubParsersAction) -> None:
    p = trace_subparsers.add_parser("capture", help=HELP, description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    from simmoe.cli import common

    p = argparse.ArgumentParser(prog="simmoe trace capture", description=DESCRIPTION)
    add_arguments(p)
    common.add_verbosity(p, top=True)
    args = p.parse_args(argv)
    try:
        common.merge_verbosity(args)
        common.setup_logging(args.verbose, args.quiet)
        with common.warnings_shown(args.quiet):
            return run(args)
    except InputError as e:
        print(f"simmoe: error: {e.line()}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
