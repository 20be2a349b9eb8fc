"""Routing capture from transformers MoE models: tiny random models of every supported class.

The capture (KV-cached greedy decoding, router outputs read by hooks) is checked against an independent
recomputation: one full forward pass over the request's fed tokens without a cache, router logits from
`output_router_logits=True`, turned into top-k by the architecture's documented rule.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
if int(tf.__version__.split(".")[0]) < 5:
    pytest.skip("capture needs transformers >= 5", allow_module_level=True)

from conftest import CliResult, assert_clean_error  # noqa: E402

from simmoe.capture import capture  # noqa: E402
from simmoe.capture.models import ARCHS  # noqa: E402
from simmoe.trace.format import read_trace  # noqa: E402

WORDS = "the a of to and in is it for on def class return import self if else x y z 0 1 2".split()
PROMPTS = ["def x ( self ) : return x", "import a if it is the class"]
MAX_NEW = 4


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS + list("():")))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")


_COMMON = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=128, eos_token_id=0, pad_token_id=0, bos_token_id=0)
_MLA = dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, first_k_dense_replace=1,
            intermediate_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2,
            n_shared_experts=1)

# model_type -> (config factory, expected MoE layer indices, experts, top-k)
CONFIGS = {
    "mixtral": (lambda: tf.MixtralConfig(**_COMMON, intermediate_size=64, num_local_experts=4,
                                         num_experts_per_tok=2), (0, 1), 4, 2),
    "qwen2_moe": (lambda: tf.Qwen2MoeConfig(**_COMMON, intermediate_size=64, moe_intermediate_size=32,
                                            shared_expert_intermediate_size=48, num_experts=8,
                                            num_experts_per_tok=2, norm_topk_prob=False), (0, 1), 8, 2),
    "qwen3_moe": (lambda: tf.Qwen3MoeConfig(**{**_COMMON, "num_hidden_layers": 3}, intermediate_size=64,
                                            moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                            norm_topk_prob=True, mlp_only_layers=[0], head_dim=8), (1, 2), 8, 2),
    "olmoe": (lambda: tf.OlmoeConfig(**_COMMON, intermediate_size=32, num_experts=8, num_experts_per_tok=2),
              (0, 1), 8, 2),
    "deepseek_v2": (lambda: tf.DeepseekV2Config(**{**_COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4},
                                                **_MLA, q_lora_rank=None, topk_method="group_limited_greedy",
                                                n_group=2, topk_group=1, routed_scaling_factor=2.0), (1, 2), 8, 2),
    "deepseek_v3": (lambda: tf.DeepseekV3Config(**{**_COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4},
                                                **_MLA, q_lora_rank=24, n_group=4, topk_group=2,
                                                routed_scaling_factor=2.5, norm_topk_prob=True), (1, 2), 8, 2),
    "gpt_oss": (lambda: tf.GptOssConfig(**_COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                                        head_dim=8, layer_types=["sliding_attention", "full_attention"],
                                        sliding_window=16), (0, 1), 4, 2),
    "switch_transformers": (lambda: tf.SwitchTransformersConfig(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_sparse_encoder_layers=2,
        num_sparse_decoder_layers=2, num_heads=4, num_experts=4, expert_capacity=3, eos_token_id=0, pad_token_id=0,
        decoder_start_token_id=0), (0, 1, 2, 3), 4, 1),
}


def _build(model_type: str, path) -> None:
    """A random tiny model saved with its tokenizer. Router weights are drawn wider than the default init so
    that routing has clear winners (no near-ties between the cached and the full forward)."""
    torch.manual_seed(0)
    cfg = CONFIGS[model_type][0]()
    auto = tf.AutoModelForSeq2SeqLM if ARCHS[model_type].encoder_decoder else tf.AutoModelForCausalLM
    model = auto.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("mlp.gate.weight", "mlp.router.weight", "router.classifier", "router.bias")):
                p.normal_(0, 0.5)
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:  # exercise DeepSeek-V3's biased choice
                b.normal_(0, 0.1)
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """model_type -> (model dir, CaptureResult with predict=True), built lazily once per module."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("capture")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    def get(model_type: str):
        if model_type not in cache:
            d = root / model_type
            _build(model_type, d)
            # Switch's random decoder emits its start token (= EOS) at once; ignore EOS to get decode rows
            res = capture(model_path=d, prompts_path=prompts, max_new_tokens=MAX_NEW, predict=True,
                          ignore_eos=ARCHS[model_type].encoder_decoder, progress=False)
            cache[model_type] = (d, res)
        return cache[model_type]

    get.prompts = prompts
    return get


def _reference(model_type: str, d, tokens: list[int], n_prompt: int):
    """Per trace column: (ids [T, K], weights [T, K], predicted ids [T, K] or None) from one full forward
    over the request's fed tokens, with router logits from output_router_logits and the documented rule."""
    from simmoe.capture.models import find_routers

    arch = ARCHS[model_type]
    auto = tf.AutoModelForSeq2SeqLM if arch.encoder_decoder else tf.AutoModelForCausalLM
    model = auto.from_pretrained(d, local_files_only=True).eval()
    n_enc = model.config.num_layers if arch.encoder_decoder else 0
    sites = find_routers(model, arch, n_enc)
    for s in sites:
        if s.stack == "decoder" and arch.encoder_decoder:
            # generation feeds the decoder one token per step, so capacity never drops a decode token there;
            # the full decoder pass here must not apply it across the whole sequence
            s.module.expert_capacity = 1 << 30
    inputs: dict[int, torch.Tensor] = {}
    handles = [s.module.register_forward_pre_hook(
        lambda m, a, c=s.column: inputs.__setitem__(c, a[0].reshape(-1, a[0].shape[-1]))) for s in sites]
    with torch.no_grad():
        if arch.encoder_decoder:
            dec = [model.config.decoder_start_token_id] + tokens[n_prompt:-1]
            out = model(input_ids=torch.tensor([tokens[:n_prompt]]), decoder_input_ids=torch.tensor([dec]),
                        output_router_logits=True, use_cache=False)
            logits = [*out.encoder_router_logits, *out.decoder_router_logits]
        else:
            out = model(input_ids=torch.tensor([tokens[:-1]]), output_router_logits=True, use_cache=False)
            logits = list(out.router_logits)
        for h in handles:
            h.remove()
        assert len(logits) == len(sites)
        ref = []
        for s, lg in zip(sites, logits, strict=True):
            lg = lg[0] if isinstance(lg, tuple) else lg
            ids, w = arch.rule(lg.reshape(-1, lg.shape[-1]), s.module)
            nxt = next((t for t in sites if t.column == s.column + 1 and t.stack == s.stack), None)
            pred = None
            if nxt is not None:
                plog = nxt.module(inputs[s.column])[arch.logits_index]
                pred = arch.rule(plog.reshape(-1, plog.shape[-1]), nxt.module)[0]
            ref.append((ids, w, pred))
    return sites, ref


def _capacity(ids: np.ndarray, cap: int) -> np.ndarray:
    """Top-1 ids with a token dropped (-1) once its expert already took `cap` earlier tokens."""
    out = ids[:, 0].copy()
    for t, e in enumerate(ids[:, 0]):
        if (ids[:t, 0] == e).sum() >= cap:
            out[t] = -1
    return out[:, None]


def _as_sets(a) -> list[frozenset]:
    return [frozenset(int(x) for x in row if x >= 0) for row in np.asarray(a)]


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_capture_matches_full_forward_recompute(captured, model_type):
    if model_type not in ARCHS:
        pytest.skip(f"{model_type} not in this transformers")
    d, res = captured(model_type)
    tr = res.trace
    _, moe_layers, n_exp, k = CONFIGS[model_type]
    arch = ARCHS[model_type]
    assert tr.spec.moe_layers == moe_layers and tr.spec.num_experts == n_exp and tr.spec.top_k == k
    assert tr.experts.shape[1:] == (len(moe_layers), k)
    assert tr.num_requests == len(PROMPTS)
    for r, toks in enumerate(res.tokens):
        rows = tr.request_slices[r]
        n_prompt = len(_tokenizer()(PROMPTS[r])["input_ids"])
        generated = len(toks) - n_prompt
        assert 1 <= generated <= MAX_NEW
        ph = tr.phase[rows]
        # rows = prompt tokens + fed-back generated tokens (encoder-decoder: + the decoder start token)
        n_dec = generated if arch.encoder_decoder else generated - 1
        assert (ph == 0).sum() == n_prompt and (ph == 1).sum() == n_dec
        assert (np.diff(ph) >= 0).all()
        sites, ref = _reference(model_type, d, toks, n_prompt)
        ex, gs, pr = tr.experts[rows], tr.gates[rows], tr.predicted[rows]
        for s, (ids, w, pred) in zip(sites, ref, strict=True):
            if arch.encoder_decoder:
                row_sel = slice(0, n_prompt) if s.stack == "encoder" else slice(n_prompt, None)
                other = slice(n_prompt, None) if s.stack == "encoder" else slice(0, n_prompt)
                assert (ex[other, s.column] == -1).all() and np.isnan(gs[other, s.column]).all()
            else:
                row_sel = slice(None)
            got_ids, got_w = ex[row_sel, s.column], gs[row_sel, s.column]
            ids, w = ids.numpy(), w.float().numpy()
            if arch.encoder_decoder and s.stack == "encoder":
                # Switch drops a token whose expert already took expert_capacity earlier tokens
                cap = tf.AutoConfig.from_pretrained(d).expert_capacity
                ids = _capacity(ids, cap)
                w = np.where(ids >= 0, w, np.nan)
                if pred is not None:  # the prediction is that router's decision too, capacity included
                    pred = torch.from_numpy(_capacity(pred.numpy(), cap))
            assert _as_sets(got_ids) == _as_sets(ids), (model_type, s.name)
            # gates: the rule's weights, slots in descending gate order
            order = np.argsort(-np.nan_to_num(w, nan=-1.0), axis=1, kind="stable")
            np.testing.assert_allclose(got_w, np.take_along_axis(w, order, 1), rtol=1e-4, atol=1e-5)
            assert (np.diff(np.nan_to_num(got_w, nan=-1.0), axis=1) <= 0).all()
            if pred is None:
                assert (pr[:, s.column] == -1).all()
            else:
                assert _as_sets(pr[row_sel, s.column]) == _as_sets(pred.numpy()), (model_type, s.name)


def test_greedy_tokens_equal_generate(captured):
    d, res = captured("mixtral")
    model = tf.AutoModelForCausalLM.from_pretrained(d, local_files_only=True).eval()
    tok = _tokenizer()
    for r, p in enumerate(PROMPTS):
        ids = torch.tensor([tok(p)["input_ids"]])
        out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
        want = out[0].tolist()
        if 0 in want[ids.shape[1]:]:  # generate pads after EOS
            want = want[: ids.shape[1] + want[ids.shape[1]:].index(0) + 1]
        assert res.tokens[r] == want


def test_meta_provenance_and_roundtrip(captured, tmp_path):
    from simmoe.trace.format import write_trace

    d, res = captured("qwen2_moe")
    meta = res.trace.meta
    cap = meta["capture"]
    assert meta["model_spec"]["num_shared_experts"] == 1 and meta["model_spec"]["shared_d_ff"] == 48
    import hashlib

    assert cap["prompts_sha256"] == hashlib.sha256(captured.prompts.read_bytes()).hexdigest()
    assert cap["transformers"] == tf.__version__ and cap["torch"] == torch.__version__
    assert cap["model_type"] == "qwen2_moe" and cap["dtype"] == "fp32"
    out = tmp_path / "t.npz"
    write_trace(res.trace, out)
    back = read_trace(out)
    assert np.array_equal(back.experts, res.trace.experts)
    assert np.array_equal(back.predicted, res.trace.predicted)
    assert back.spec.to_dict() == res.trace.spec.to_dict()
    json.dumps(back.meta)


def test_bf16_capture_threads_and_extra_meta(captured, tmp_path):
    d, _ = captured("mixtral")
    extra = tmp_path / "training.json"
    extra.write_text(json.dumps({"steps": 3, "corpus": "x"}))
    before = torch.get_num_threads()
    try:
        res = capture(model_path=d, prompts_path=captured.prompts, max_new_tokens=2, dtype="bf16",
                      progress=False, threads=1, extra_meta=extra)
    finally:
        torch.set_num_threads(before)
    meta = res.trace.meta
    assert meta["model_spec"]["dtype"] == "bf16" and meta["capture"]["dtype"] == "bf16"
    assert meta["capture"]["torch_threads"] == 1
    assert meta["capture"]["model_name"] == d.name
    assert meta["extra"] == {"steps": 3, "corpus": "x"}
    assert (res.trace.experts >= 0).all()


def _run_capture(*args: str):
    """The capture command, standalone (the same code `simmoe trace capture` runs)."""
    import contextlib
    import io

    from simmoe.cli.trace_capture import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main([*args, "--quiet"])
    return CliResult(rc, out.getvalue(), err.getvalue())


def test_errors_are_one_line(captured, tmp_path):
    d, _ = captured("mixtral")
    out = str(tmp_path / "t.npz")
    p = str(captured.prompts)
    assert_clean_error(_run_capture("--model", str(tmp_path / "nope"), "--prompts", p, "--out", out),
                       "nope", "no such model folder")
    assert_clean_error(_run_capture("--model", str(tmp_path), "--prompts", p, "--out", out), "config.json")
    dense = tmp_path / "dense"
    tf.LlamaConfig(**{k: v for k, v in _COMMON.items()}).save_pretrained(dense)
    assert_clean_error(_run_capture("--model", str(dense), "--prompts", p, "--out", out),
                       "model_type", "not an MoE model")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "jetmoe", "num_experts": 8}))
    assert_clean_error(_run_capture("--model", str(other), "--prompts", p, "--out", out),
                       "'jetmoe' is not supported", "mixtral")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "the a"}\n{"text": 3}\n')
    assert_clean_error(_run_capture("--model", str(d), "--prompts", str(bad), "--out", out), "line 2")
    assert_clean_error(_run_capture("--model", str(d), "--prompts", p, "--out", str(tmp_path / "no" / "t.npz")),
                       "does not exist")
    assert_clean_error(_run_capture("--model", str(d), "--prompts", p, "--out", out, "--max-new-tokens", "0"),
                       "--max-new-tokens")
    notobj = tmp_path / "extra.json"
    notobj.write_text("[1, 2]")
    assert_clean_error(_run_capture("--model", str(d), "--prompts", p, "--out", out, "--extra-meta", str(notobj)),
                       "extra.json", "JSON object")
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.slow  # a subprocess that imports torch + transformers (~10 s)
def test_cli_trace_capture(captured, simmoe_cli, tmp_path):
    """End to end through the real `simmoe trace capture` console script."""
    d, res = captured("mixtral")
    out = tmp_path / "cli.npz"
    r = simmoe_cli("trace", "capture", "--model", d, "--prompts", captured.prompts, "--out", out,
                   "--max-new-tokens", MAX_NEW, "--predict", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    back = read_trace(out)
    assert np.array_equal(back.experts, res.trace.experts)
    assert np.array_equal(back.predicted, res.trace.predicted)
    np.testing.assert_array_equal(back.gates, res.trace.gates)
