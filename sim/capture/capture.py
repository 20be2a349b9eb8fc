"""Capture a `simmoe-trace/1` routing trace from a local Hugging Face transformers MoE model.

Each prompt is one request, run alone (batch 1) with greedy decoding and a KV cache:

- decoder-only models: the prompt's forward pass gives the request's prefill rows (one per prompt token);
  each generated token that is fed back gives one decode row. The last generated token is never fed back,
  so a request has prompt_tokens + generated - 1 rows (generation stops at max_new_tokens or at EOS unless
  ignore_eos).
- encoder-decoder (Switch Transformer): the trace's layer columns are the encoder's MoE blocks then the
  decoder's. The encoder pass over the prompt gives the prefill rows (encoder columns filled, decoder
  columns -1); each decoder step gives one decode row (decoder columns filled, encoder columns -1), starting
  with the decoder start token, so a request has prompt_tokens + generated rows. Prompt tokens an expert
  drops for capacity (expert_capacity per sequence) are -1 with a NaN gate; a decode step routes one token,
  so capacity never drops a decode token.

Recorded per row and MoE layer: the router's own top-k expert ids and gate weights (slots in descending
gate order), read by forward hooks on the router modules, so each architecture's normalisation is the one
the model itself applies. Shared experts are always active and not in the trace (the spec counts them).
With `predict`, `predicted[row, l]` = the experts MoE layer l+1's router picks when applied to layer l's
router input (-1 for the last MoE layer of each stack).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simmoe.errors import InputError
from simmoe.models.spec import ModelSpec
from simmoe.trace.format import PREFILL, Trace, make_meta, validate, write_trace

DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class Prompt:
    text: str
    info: dict[str, Any] = field(default_factory=dict)


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts file: .jsonl = one JSON object per line with a "prompt" string (other keys kept as info) or a
    JSON string; any other file = one prompt per non-empty line."""
    p = Path(path)
    src = str(path)
    if not p.is_file():
        raise InputError(src, None, "no such file" if not p.exists() else "not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(src, None, f"cannot read as UTF-8 text ({e})") from None
    prompts: list[Prompt] = []
    if p.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InputError(src, f"line {n}", f"not valid JSON ({e})") from None
            if isinstance(obj, str):
                prompts.append(Prompt(obj))
            elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                prompts.append(Prompt(obj["prompt"], {k: v for k, v in obj.items() if k != "prompt"}))
            else:
                raise InputError(src, f"line {n}", 'must be a JSON string or an object with a "prompt" string')
    else:
        prompts = [Prompt(line) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(src, None, "no prompts")
    for i, pr in enumerate(prompts):
        if not pr.text.strip():
            raise InputError(src, f"prompt {i}", "is empty")
    return prompts


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise InputError("--dtype", None, f"unknown {name!r}; expected one of {', '.join(DTYPES)}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_model(path: str | Path, dtype: str = "fp32", device: str = "cpu"):
    """(model, tokenizer, config, arch) from a local model folder; InputError for anything unusable."""
    from simmoe.capture.models import ARCHS, MOE_CONFIG_KEYS

    src = str(path)
    p = Path(path)
    if not p.is_dir():
        raise InputError(src, None, "no such model folder" if not p.exists() else "not a folder")
    if not (p / "config.json").is_file():
        raise InputError(src, "config.json", "missing: not a Hugging Face transformers model folder")
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    except ImportError as e:
        raise InputError("capture", None, f"needs the capture extra (pip install 'simmoe[capture]'): {e}") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise InputError("capture", "transformers", f"version {transformers.__version__} is too old: routers "
                         "return their top-k decision from transformers 5.0 on")
    torch_dtype = _torch_dtype(dtype)
    if device not in ("cpu", "cuda"):
        raise InputError("--device", None, f"unknown {device!r}; expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no CUDA device")
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        raise InputError(src, "config.json", f"cannot load: {str(e).splitlines()[0]}") from None
    mtype = getattr(config, "model_type", "?")
    arch = ARCHS.get(mtype)
    if arch is None:
        if any(getattr(config, k, None) for k in MOE_CONFIG_KEYS):
            raise InputError(src, "model_type", f"MoE class {mtype!r} is not supported; supported: "
                             f"{', '.join(sorted(ARCHS))}")
        raise InputError(src, "model_type", f"{mtype!r} is not an MoE model (supported MoE classes: "
                         f"{', '.join(sorted(ARCHS))})")
    auto = AutoModelForSeq2SeqLM if arch.encoder_decoder else AutoModelForCausalLM
    transformers.utils.logging.disable_progress_bar()  # capture shows its own progress bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except (ValueError, OSError, TypeError) as e:
        raise InputError(src, "tokenizer", f"cannot load: {str(e).splitlines()[0]}") from None
    try:
        model = auto.from_pretrained(p, local_files_only=True, dtype=torch_dtype)
    except (ValueError, OSError) as e:
        raise InputError(src, "weights", f"cannot load: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, tokenizer, config, arch


def derive_spec(model: Any, config: Any, arch: Any, sites: list, name: str, dtype: str) -> ModelSpec:
    """ModelSpec from the config, with the MoE layers found in the model (the layers that have a router)."""
    d = arch.spec_fields(config)
    d.update(name=name, moe_layers=tuple(s.layer for s in sites), dtype=dtype, expert_dtype=dtype,
             reference=f"{type(model).__name__} config ({config.model_type})")
    if len(d["moe_layers"]) < d["num_layers"] and not d.get("dense_d_ff"):
        d["dense_d_ff"] = d["expert_d_ff"]
    if not arch.encoder_decoder:  # the spec has no cross-attention: leave Switch's attention to the formula
        # measured attention parameters where the q/k/v/o formula does not hold (MLA, biases)
        attn = _first_attention(model)
        if attn is not None:
            n = sum(p.numel() for p in attn.parameters())
            probe = ModelSpec(**{**d, "attn_params_override": 0})
            if n != probe.attn_params:
                d["attn_params_override"] = int(n)
    return ModelSpec(**d)


def _first_attention(model: Any):
    for name, mod in model.named_modules():
        if name.endswith(".self_attn"):
            return mod
    return None


@dataclass
class CaptureResult:
    trace: Trace
    tokens: list[list[int]]  # per request: prompt ids + generated ids


def capture(model_path: str | Path, prompts_path: str | Path, max_new_tokens: int = 32, dtype: str = "fp32",
            device: str = "cpu", predict: bool = False, ignore_eos: bool = False, name: str | None = None,
            progress: bool = True, threads: int | None = None, extra_meta: str | Path | None = None
            ) -> CaptureResult:
    """Runs every prompt through the model and returns the validated trace (not yet written).
    `threads`: torch CPU threads (default: torch's own choice). `extra_meta`: a JSON file whose object is
    stored as meta["extra"] (e.g. how the model was trained)."""
    extra = _read_extra(extra_meta) if extra_meta is not None else None
    if max_new_tokens < 1:
        raise InputError("--max-new-tokens", None, f"must be >= 1, got {max_new_tokens}")
    if threads is not None and threads < 1:
        raise InputError("--threads", None, f"must be >= 1, got {threads}")
    prompts = read_prompts(prompts_path)
    model, tokenizer, config, arch = load_model(model_path, dtype, device)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    import transformers

    from simmoe.capture.hooks import RouterRecorder
    from simmoe.capture.models import find_routers
    from simmoe.progress import bar as progress_bar

    n_enc = int(getattr(config, "num_layers", 0)) if arch.encoder_decoder else 0
    sites = find_routers(model, arch, n_enc)
    if not sites:
        raise InputError(str(model_path), "model", f"no {arch.router_class} modules: not an MoE model?")
    spec = derive_spec(model, config, arch, sites, name or Path(model_path).resolve().name, dtype)
    enc_cols = [s.column for s in sites if s.stack == "encoder"]
    dec_cols = [s.column for s in sites if s.stack == "decoder"]
    max_pos = getattr(config, "max_position_embeddings", None)
    eos = None if ignore_eos else _eos_ids(model, tokenizer)

    rows_ex, rows_g, rows_p, rows_req, rows_ph = [], [], [], [], []
    all_tokens: list[list[int]] = []
    with torch.inference_mode(), RouterRecorder(arch, sites, spec.top_k, predict) as rec:
        for r, pr in enumerate(progress_bar(prompts, enabled=progress, desc="capture", unit="prompt")):
            ids = tokenizer(pr.text, return_tensors="pt")["input_ids"].to(device)
            T = int(ids.shape[1])
            if T == 0:
                raise InputError(str(prompts_path), f"prompt {r}", "tokenizes to no tokens")
            if max_pos and not arch.encoder_decoder and T + max_new_tokens > max_pos:
                raise InputError(str(prompts_path), f"prompt {r}", f"{T} tokens + {max_new_tokens} new exceed "
                                 f"the model's max_position_embeddings {max_pos}")

            def record(tokens: int, phase: int, cols: list[int], r: int = r) -> None:
                ex, g, p = rec.take(tokens, cols)
                rows_ex.append(ex)
                rows_g.append(g)
                rows_p.append(p)
                rows_req.append(np.full(tokens, r, np.int32))
                rows_ph.append(np.full(tokens, phase, np.int8))

            generated = _greedy(model, arch, ids, max_new_tokens, eos, record, enc_cols, dec_cols)
            all_tokens.append(ids[0].tolist() + generated)

    experts = np.concatenate(rows_ex)
    gates = np.concatenate(rows_g)
    phase = np.concatenate(rows_ph)
    meta = make_meta(
        model_spec=spec,
        source="simmoe trace capture: transformers forward hooks on the router modules, greedy decoding, "
               "batch 1, KV cache",
        capture=_provenance(model_path, prompts_path, prompts, config, arch, dtype, device, max_new_tokens,
                            predict, ignore_eos, torch.__version__, transformers.__version__,
                            torch.get_num_threads(), experts, phase),
    )
    if extra is not None:
        meta["extra"] = extra
    trace = Trace(experts=experts, request=np.concatenate(rows_req), phase=phase, meta=meta, gates=gates,
                  predicted=np.concatenate(rows_p) if predict else None, source="capture")
    validate(trace)
    return CaptureResult(trace, all_tokens)


def _read_extra(path: str | Path) -> dict:
    src = str(path)
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(src, None, "no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(src, None, f"not a readable JSON file ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(src, None, f"must hold a JSON object, got {type(obj).__name__}")
    return obj


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _greedy(model: Any, arch: Any, ids: Any, max_new: int, eos: set[int] | None, record: Any,
            enc_cols: list[int], dec_cols: list[int]) -> list[int]:
    """Greedy decoding with a KV cache, recording each forward step's routing; returns the generated ids."""
    T = int(ids.shape[1])
    out_ids: list[int] = []
    eos = eos or set()
    if arch.encoder_decoder:
        enc = model.get_encoder()(input_ids=ids)
        record(T, PREFILL, enc_cols)
        tok = ids.new_full((1, 1), int(model.config.decoder_start_token_id))
        past = None
        while True:
            out = model(encoder_outputs=enc, decoder_input_ids=tok, past_key_values=past, use_cache=True)
            record(1, 1, dec_cols)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            out_ids.append(nxt)
            if len(out_ids) >= max_new or nxt in eos:
                return out_ids
            tok = ids.new_full((1, 1), nxt)
    out = model(input_ids=ids, use_cache=True)
    record(T, PREFILL, dec_cols)
    while True:
        nxt = int(out.logits[0, -1].argmax())
        out_ids.append(nxt)
        if len(out_ids) >= max_new or nxt in eos:
            return out_ids
        out = model(input_ids=ids.new_full((1, 1), nxt), past_key_values=out.past_key_values, use_cache=True)
        record(1, 1, dec_cols)


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _model_name(config: Any, folder: Path) -> str:
    """The hub name the checkpoint came from when its config records one, else the folder name."""
    name = str(getattr(config, "_name_or_path", "") or "")
    return name if name and not Path(name).exists() else folder.name


def _provenance(model_path, prompts_path, prompts, config, arch, dtype, device, max_new, predict, ignore_eos,
                torch_version, tf_version, torch_threads, experts, phase) -> dict[str, Any]:
    mp = Path(model_path).resolve()
    weights = sorted(mp.glob("*.safetensors"))
    info = {
        "model_path": str(mp),
        "model_name": _model_name(config, mp),
        "model_type": config.model_type,
        "router_class": arch.router_class,
        "weights_sha256": {w.name: _sha256(w) for w in weights if w.stat().st_size < 1 << 30},
        "prompts_file": os.path.basename(str(prompts_path)),
        "prompts_sha256": _sha256(prompts_path),
        "num_prompts": len(prompts),
        "decoding": "greedy",
        "max_new_tokens": max_new,
        "stop_at_eos": not ignore_eos,
        "dtype": dtype,
        "device": device,
        "torch_threads": torch_threads,  # CPU float reductions (so gates' last bits) depend on it
        "prefill_rows": int((phase == PREFILL).sum()),
        "decode_rows": int((phase != PREFILL).sum()),
        "slot_order": "descending gate weight",
        "predicted": ("experts MoE layer l+1's router picks from layer l's router input" if predict else None),
        "transformers": tf_version,
        "torch": torch_version,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    if arch.encoder_decoder:
        info["layers"] = ("encoder MoE blocks then decoder MoE blocks; prefill rows fill the encoder "
                          "columns, decode rows the decoder columns, the rest is -1")
    return info


def capture_to_file(out: str | Path, **kw: Any) -> Trace:
    res = capture(**kw)
    write_trace(res.trace, out)
    return res.trace
