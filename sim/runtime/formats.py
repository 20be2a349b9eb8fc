"""Weight formats a runtime stores and computes with: how many bits a weight takes in memory and over PCIe,
how many bytes its GEMM kernel reads per weight, and how many more bytes of memory traffic per weight a
separate dequantisation pass adds on every call.

Figures are derived from the formats' definitions (block layouts in the frameworks' source), as recorded in
docs/runtimes/ (each cites the repository, file and line):

- GGUF k-quants (ggml-common.h block structs): Q4_K 144 B per 256 weights = 4.5 bits; Q5_K 176 B = 5.5;
  Q6_K 210 B = 6.5625; Q8_0 34 B per 32 = 8.5. Fused dequantising kernels (MMVQ / MMQ) read exactly the
  blocks: bytes per weight = bits / 8, no extra pass.
- Q4_K_M as llama-quant.cpp assigns it for Mixtral-8x7B: experts gate/up Q4_K, down Q6_K in 16 of 32 layers
  (4.84 bits on average); attention q Q4_K, o Q5_K, k/v Q8_0 (5.70 bits weighted by the projections' sizes).
- HQQ as Mixtral-offloading uses it (hqq @ 37502bea, `Quantizer.quantize`; mixtral-offloading
  `custom_layers.py`): 2-bit group 16 with 8-bit scale (group 128) and zero = 3.016 bits stored; its Triton
  GEMM unpacks the weights and reads fp16 scale and zero per group (0.25 + 0.25 bytes per weight); the eager
  re-dequantisation of scale and zero before every call moves 1.375 more bytes per weight (80.7 MB per
  4096 x 14336 matrix). 3-bit group 64: 3.754 bits, 0.4375 + 0.0625 bytes per weight read, 0.344 extra.
  Attention 4-bit group 64 (scale group 256): 4.252 bits, 0.5 + 0.0625 read, 0.344 extra.
- Marlin / GPTQ int4 group 64 (kTransformers' dense weights): 4 bits + an fp16 scale per 64 = 4.25 bits,
  fused in the GEMM. MXFP4 (gpt-oss): 4 bits + an 8-bit scale per 32 = 4.25 bits.
- bf16 / fp16 2 bytes, fp8 1 byte (per-tensor scale), int8 weight-only 1 byte (per-channel scale).
"""

from __future__ import annotations

from dataclasses import dataclass

from simmoe.errors import InputError


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: float  # stored bits per weight, scales and zeros included (memory, copies)
    gemm_bytes: float  # bytes a GEMM kernel reads per weight
    dequant_bytes: float = 0.0  # extra memory traffic per weight per call (separate dequantisation passes)
    note: str = ""


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("bf16", 16.0, 2.0, note="native"),
    WeightFormat("fp16", 16.0, 2.0, note="native"),
    WeightFormat("fp32", 32.0, 4.0, note="native"),
    WeightFormat("fp8", 8.0, 1.0, note="per-tensor scale; native on Hopper/Ada (Ampere: weight-only, upcast)"),
    WeightFormat("int8", 8.0, 1.0, note="weight-only, per-channel scale"),
    WeightFormat("mxfp4", 4.25, 0.53125, note="4 bits + 8-bit scale per 32 (gpt-oss), fused"),
    WeightFormat("int4-g64", 4.25, 0.53125, note="GPTQ / Marlin: 4 bits + fp16 scale per 64, fused"),
    WeightFormat("hqq2-g16", 3.016, 0.5, 1.375, note="Mixtral-offloading experts: HQQ 2-bit group 16"),
    WeightFormat("hqq3-g64", 3.754, 0.5, 0.344, note="Mixtral-offloading experts: HQQ 3-bit group 64"),
    WeightFormat("hqq4-g64", 4.252, 0.5625, 0.344, note="Mixtral-offloading attention: HQQ 4-bit group 64"),
    WeightFormat("q4_k", 4.5, 0.5625, note="GGUF Q4_K, fused (MMVQ/MMQ)"),
    WeightFormat("q5_k", 5.5, 0.6875, note="GGUF Q5_K, fused"),
    WeightFormat("q6_k", 6.5625, 0.8203125, note="GGUF Q6_K, fused"),
    WeightFormat("q8_0", 8.5, 1.0625, note="GGUF Q8_0, fused"),
    WeightFormat("q4_k_m-experts", 4.84, 0.605, note="GGUF Q4_K_M as llama.cpp assigns Mixtral's experts"),
    WeightFormat("q4_k_m-attention", 5.70, 0.7125, note="GGUF Q4_K_M as llama.cpp assigns Mixtral's attention"),
)}


def get_format(name: str, source: str = "runtime", field: str | None = None) -> WeightFormat:
    f = FORMATS.get(name)
    if f is None:
        raise InputError(source, field, f"unknown weight format {name!r}; known: {', '.join(FORMATS)}")
    return f
