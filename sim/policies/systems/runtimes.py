"""Named systems that run on a bundled runtime profile (sim/runtime/bundled/): the framework's software
(`SystemPolicy.runtime`) with the policies it implements. `--runtime` given beside them overrides the
runtime; `--prefetch` / `--placement` override their choices as for every system."""

from __future__ import annotations

from pydantic import Field

from simmoe.policies.base import CacheSize, Options, PolicySet, SystemPolicy, cache_size_options


class MixtralOffloadingOptions(CacheSize):
    speculative: bool = Field(True, description="speculative next-layer loading (Table 2's 'full' algorithm)")
    accuracy: float = Field(0.8, ge=0.0, le=1.0, description="speculative loading's hit rate when the trace has "
                            "no `predicted` array (~0.8: 'above 80-90%' in a summary of the paper)")


class MixtralOffloading(SystemPolicy):
    name = "mixtral-offloading"
    summary = "Mixtral-offloading: per-layer LRU (4 slots) + speculative next-layer loading, on its runtime"
    reference = "Eliseev & Mazur 2023 (arXiv 2312.17238); dvmazur/mixtral-offloading"
    runtime = "mixtral-offloading"
    Options = MixtralOffloadingOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        cache = cache_size_options(options) or {"slots_per_layer": 4}  # the paper's k (2 on a 12 GB card)
        if not options.speculative:
            return PolicySet(cache="lru", cache_options=cache)
        return PolicySet(cache="lru", cache_options=cache, prefetch="next-layer",
                         prefetch_options={"accuracy": options.accuracy})


class HfAccelerate(SystemPolicy):
    name = "hf-accelerate"
    summary = "accelerate device_map offload: every called expert copied at use, nothing kept"
    reference = "huggingface/accelerate AlignDevicesHook"
    runtime = "hf-accelerate"
    composition = {"cache": "ondemand"}


class DeepSpeedZero3(SystemPolicy):
    name = "deepspeed-zero3"
    summary = "ZeRO-3 inference with parameter offload: every expert of each MoE block gathered each step"
    reference = "microsoft/DeepSpeed ZeRO-Inference; DeepSpeed-MII"
    runtime = "deepspeed-zero3"
    composition = {"cache": "ondemand"}


class LlamaCppOptions(Options):
    n_cpu_moe: int = Field(0, ge=0, description="--n-cpu-moe: experts of the first N MoE layers on the CPU")


class LlamaCpp(SystemPolicy):
    name = "llama.cpp"
    summary = "llama.cpp: experts of the first n_cpu_moe layers on the CPU, the others resident on the GPU"
    reference = "ggml-org/llama.cpp --n-cpu-moe"
    runtime = "llama.cpp"
    Options = LlamaCppOptions

    @classmethod
    def expand(cls, options) -> PolicySet:
        return PolicySet(cache="resident", placement="n-cpu-moe", placement_options={"n": options.n_cpu_moe})


class Vllm(SystemPolicy):
    name = "vllm"
    summary = "vLLM: every expert resident, fused MoE kernels, CUDA graphs for decode"
    reference = "vllm-project/vllm fused_moe"
    runtime = "vllm"
    composition = {"cache": "resident"}


class KTransformers(SystemPolicy):
    name = "ktransformers"
    summary = "kTransformers: every routed expert on the CPU, attention and shared experts on the GPU"
    reference = "kvcache-ai/ktransformers"
    runtime = "ktransformers"
    composition = {"cache": "ondemand", "placement": "cpu"}


class FiddlerOptions(CacheSize):
    profile: str | None = Field(None, description="routing trace (.npz) whose popularity picks the GPU experts")
    profile_prefix: float | None = Field(None, gt=0.0, le=1.0, description="or: this fraction of the run (oracle)")


class FiddlerSystem(SystemPolicy):
    name = "fiddler-mixtral"  # `fiddler` names its placement policy
    summary = "Fiddler: popular experts on the GPU, a miss computed on the CPU when that is cheaper than a copy"
    reference = "Kamahori et al. 2024, Fiddler (efeslab/fiddler)"
    runtime = "fiddler"
    Options = FiddlerOptions

    @classmethod
    def reads_future_for(cls, options) -> bool:
        return options.profile_prefix is not None

    @classmethod
    def expand(cls, options) -> PolicySet:
        opts = cache_size_options(options, "profile", "profile_prefix")
        return PolicySet(cache="static-popular", cache_options={**opts, "lru_slots": 0}, placement="fiddler")
