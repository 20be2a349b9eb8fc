"""Train a tiny Mixtral-class MoE language model on the Python standard library, then capture its routing.

Produces the sample trace traces/tinymoe-stdlib.npz (a real routing trace from a real, if tiny, trained MoE)
without downloading anything: the corpus is this interpreter's own standard library source
(sysconfig.get_paths()["stdlib"], *.py, sorted paths; tests, encodings tables and vendored trees excluded).

    python traces/train_tiny_moe.py                 # train (400 steps, ~14 min on 1 thread) + prompts + capture
    python traces/train_tiny_moe.py --skip-train    # re-capture from an already trained model dir

Then prints the trace's popularity skew, previous-token reuse and LRU hit rates next to a uniform-random
trace of the same shape (also written to <model-dir>/trace_stats.json).

Deterministic split: every 10th file (sorted order) is held out; training uses the rest, the capture prompts
are snippets from held-out files only (written to traces/capture_prompts.jsonl). Seeded; CPU; the number of
steps is fixed (--steps) so the run is reproducible, with --max-minutes as a safety stop that is reported.
The model (fp32 safetensors, ~15 MB) goes to build/tinymoe-stdlib/ (git-ignored) with training.json (loss
curve, settings), which the capture embeds in the trace's meta["extra"]; the trace is what ships.
Needs the `capture` extra: torch==2.13.0, transformers, tokenizers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXCLUDE_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3", "encodings", "__pycache__"}
EOS = "<|endoftext|>"


def corpus_files() -> tuple[Path, list[Path], list[Path]]:
    """(stdlib root, training files, held-out files) in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py")
                   if not EXCLUDE_PARTS.intersection(f.relative_to(root).parts) and f.is_file())
    held = [f for i, f in enumerate(files) if i % 10 == 0]
    train = [f for i, f in enumerate(files) if i % 10 != 0]
    return root, train, held


def read(f: Path) -> str:
    return f.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None)


def make_prompts(held: list[Path], root: Path, n: int, chars: int, seed: int) -> list[dict]:
    """n snippets of ~`chars` characters cut at line starts from held-out files (seeded choice)."""
    rng = np.random.default_rng(seed)
    out = []
    texts = [(f, read(f)) for f in held]
    texts = [(f, t) for f, t in texts if len(t) > 4 * chars]
    order = rng.permutation(len(texts))
    i = 0
    while len(out) < n:
        f, t = texts[order[i % len(texts)]]
        i += 1
        start = t.rfind("\n", 0, int(rng.integers(0, len(t) - 2 * chars))) + 1
        stop = t.rfind("\n", start, start + chars)
        snippet = t[start:stop if stop > start else start + chars]
        if len(snippet.strip()) < chars // 4:
            continue
        out.append({"prompt": snippet, "file": str(f.relative_to(root)), "offset": start})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "build" / "tinymoe-stdlib")
    ap.add_argument("--out", type=Path, default=HERE / "tinymoe-stdlib.npz")
    ap.add_argument("--prompts", type=Path, default=HERE / "capture_prompts.jsonl")
    ap.add_argument("--num-prompts", type=int, default=128)
    ap.add_argument("--prompt-chars", type=int, default=400)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=15.0,
                    help="safety stop (reported with the step it stopped at; reproduce with --stop-step)")
    ap.add_argument("--stop-step", type=int, default=None,
                    help="stop after this step of the --steps schedule (reproduces a time-capped run exactly)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-train", action="store_true", help="reuse --model-dir, only prompts + capture")
    ap.add_argument("--no-capture", action="store_true", help="train and save the model only")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root, train_files, held_files = corpus_files()
    print(f"stdlib {root}: {len(train_files)} training files, {len(held_files)} held out", flush=True)

    if not args.skip_train:
        texts = [read(f) for f in train_files]
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(texts, args.vocab)
        ids = tokenizer(texts)["input_ids"]
        eos = tokenizer.convert_tokens_to_ids(EOS)
        data = np.concatenate([np.array(x + [eos], np.int32) for x in ids])
        val_ids = tokenizer([read(f) for f in held_files])["input_ids"]
        val = np.concatenate([np.array(x + [eos], np.int32) for x in val_ids])
        print(f"tokenizer: vocab {len(tokenizer)}, {data.size:,} training tokens, {val.size:,} held-out "
              f"tokens ({time.perf_counter() - t0:.1f} s)", flush=True)

        config = MixtralConfig(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
            num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.01, output_router_logits=True,
            tie_word_embeddings=True, sliding_window=None, bos_token_id=eos, eos_token_id=eos,
            pad_token_id=eos,
        )
        model = MixtralForCausalLM(config)
        nparams = sum(p.numel() for p in model.parameters())
        print(f"model: Mixtral-class, {nparams / 1e6:.2f} M parameters", flush=True)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
        warm = max(1, args.steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
        rng = np.random.default_rng(args.seed)
        vrng = np.random.default_rng(args.seed + 1)
        val_starts = vrng.integers(0, val.size - args.seq - 1, 32)
        val_batch = torch.from_numpy(np.stack([val[s:s + args.seq] for s in val_starts]).astype(np.int64))

        def held_out_loss() -> float:
            model.eval()
            with torch.no_grad():
                out = model(input_ids=val_batch, labels=val_batch, output_router_logits=False)
            model.train()
            return float(out.loss)

        curve = []
        t0 = time.perf_counter()
        model.train()
        stopped_early = False
        step = 0
        for step in range(1, args.steps + 1):
            starts = rng.integers(0, data.size - args.seq - 1, args.batch)
            batch = torch.from_numpy(np.stack([data[s:s + args.seq] for s in starts]).astype(np.int64))
            out = model(input_ids=batch, labels=batch)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            el = time.perf_counter() - t0
            if step % 25 == 0 or step == 1 or step == args.steps:
                lm = float(out.loss.detach()) - config.router_aux_loss_coef * float(out.aux_loss.detach())
                row = {"step": step, "seconds": round(el, 1), "train_lm_loss": round(lm, 4),
                       "aux_loss": round(float(out.aux_loss.detach()), 4)}
                if step % 100 == 0 or step == args.steps:
                    row["held_out_loss"] = round(held_out_loss(), 4)
                curve.append(row)
                print(json.dumps(row), flush=True)
            if args.stop_step is not None and step >= args.stop_step:
                print(f"stopped at step {step} of the {args.steps}-step schedule (--stop-step)", flush=True)
                break
            if el > args.max_minutes * 60:
                stopped_early = True
                print(f"safety stop after {step} steps ({el:.0f} s); reproduce with --steps {args.steps} "
                      f"--stop-step {step}", flush=True)
                break
        train_s = time.perf_counter() - t0
        final = held_out_loss()
        print(f"trained {step} steps in {train_s:.0f} s; held-out loss {final:.3f} nats/token vs uniform "
              f"ln({len(tokenizer)}) = {math.log(len(tokenizer)):.3f}", flush=True)
        args.model_dir.mkdir(parents=True, exist_ok=True)
        model.config.output_router_logits = False
        model.generation_config.pad_token_id = eos
        model.save_pretrained(args.model_dir)
        tokenizer.save_pretrained(args.model_dir)
        info = {
            "corpus": f"python {platform.python_version()} stdlib {root} (*.py sorted; parts {sorted(EXCLUDE_PARTS)} "
                      "excluded; every 10th file held out)",
            "train_files": len(train_files), "held_out_files": len(held_files),
            "train_tokens": int(data.size), "held_out_tokens": int(val.size),
            "vocab": len(tokenizer), "params": nparams, "steps": step, "batch": args.batch, "seq": args.seq,
            "lr": args.lr, "seed": args.seed, "schedule_steps": args.steps, "threads": args.threads, "train_seconds": round(train_s, 1),
            "stopped_early": stopped_early, "final_held_out_loss": round(final, 4),
            "uniform_loss": round(math.log(len(tokenizer)), 4), "curve": curve,
            "torch": torch.__version__, "transformers": transformers.__version__,
        }
        (args.model_dir / "training.json").write_text(json.dumps(info, indent=1))

    if args.no_capture:
        return 0
    prompts = make_prompts(held_files, root, args.num_prompts, args.prompt_chars, args.seed)
    args.prompts.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {args.prompts} "
          f"(sha256 {hashlib.sha256(args.prompts.read_bytes()).hexdigest()[:16]})", flush=True)

    cmd = ["trace", "capture", "--model", str(args.model_dir), "--prompts", str(args.prompts),
           "--max-new-tokens", str(args.max_new_tokens), "--dtype", "fp32", "--predict",
           "--threads", str(args.threads), "--out", str(args.out)]
    training = args.model_dir / "training.json"
    if training.is_file():  # the trace carries how its model was trained
        cmd[-2:-2] = ["--extra-meta", str(training)]
    print("capture: simmoe " + " ".join(cmd), flush=True)
    from simmoe.cli.main import main as simmoe_main

    rc = simmoe_main(cmd)
    if rc == 0:
        report_stats(args.out, args.model_dir / "trace_stats.json")
    return rc


def uniform_like(trace, seed: int = 0):
    """The same rows, requests and phases with experts drawn uniformly (distinct per row and layer)."""
    from simmoe.trace.format import Trace

    rng = np.random.default_rng(seed)
    n, L, K = trace.experts.shape
    ex = np.argsort(rng.random((n, L, trace.num_experts)), axis=2)[:, :, :K].astype(np.int16)
    return Trace(experts=ex, request=trace.request, phase=trace.phase, meta=dict(trace.meta), source="uniform")


def report_stats(path: Path, out_json: Path) -> dict:
    """Per-layer popularity skew, previous-token reuse and LRU hit rates of the captured trace next to a
    uniform-random trace of the same shape: is the routing structured or noise?"""
    from simmoe.trace.format import read_trace
    from simmoe.trace.stats import trace_stats

    tr = read_trace(path)
    real, uni = trace_stats(tr), trace_stats(uniform_like(tr))
    keys = ("top_eighth_share", "entropy", "reuse", "successor_recall", "predicted_recall")
    print(f"{'statistic':<22}{'captured':>10}{'uniform':>10}")
    for k in keys:
        a, b = real.get(k), uni.get(k)
        print(f"{k:<22}{a if a is None else round(a, 4)!s:>10}{b if b is None else round(b, 4)!s:>10}")
    for i, (a, b) in enumerate(zip(real["per_layer_top_eighth_share"], uni["per_layer_top_eighth_share"])):
        print(f"layer {i} top-1/8 share {a:.3f} (uniform {b:.3f}), entropy {real['per_layer_entropy'][i]:.3f} "
              f"(uniform {uni['per_layer_entropy'][i]:.3f}), reuse {real['per_layer_reuse'][i]:.3f} "
              f"(uniform {uni['per_layer_reuse'][i]:.3f})")
    for a, b in zip(real["lru"], uni["lru"]):
        print(f"LRU {a['capacity']} slots/layer: hit rate {a['hit_rate']:.3f} (uniform {b['hit_rate']:.3f})")
    res = {"captured": real, "uniform": uni}
    out_json.write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    sys.exit(main())
