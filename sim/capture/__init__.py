"""Routing-trace capture from Hugging Face transformers MoE models (needs the `capture` extra).

`capture(...)` runs prompts through a local model with greedy decoding and returns a `simmoe-trace/1` Trace;
`simmoe trace capture` is the command line. torch and transformers are imported only when used.
"""

from __future__ import annotations

from simmoe.capture.capture import CaptureResult, capture, capture_to_file, read_prompts

__all__ = ["CaptureResult", "capture", "capture_to_file", "read_prompts"]
