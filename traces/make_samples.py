"""Regenerates the bundled sample traces (synthetic; see README.md): `python traces/make_samples.py`.

The arrays are a pure function of these parameters (same seed, same arrays, bit for bit)."""

from __future__ import annotations

import sys
from pathlib import Path

from simmoe.trace.format import write_trace
from simmoe.trace.synth import synth_trace

HERE = Path(__file__).resolve().parent

SAMPLES = {
    "mixtral-8x7b-synth.npz": dict(model="mixtral-8x7b", preset="mixtral-like", requests=4, prompt_tokens=32,
                                   decode_tokens=128, seed=0),
    "deepseek-v2-lite-synth.npz": dict(model="deepseek-v2-lite", preset="deepseek-v2-lite-like", requests=16,
                                       prompt_tokens=64, decode_tokens=128, seed=0),
}


def make(name: str):
    """The sample trace `name`, built from SAMPLES[name] (same call as `simmoe trace synth --preset`)."""
    from simmoe.trace.synth import preset_params

    p = dict(SAMPLES[name])
    preset = p.pop("preset")
    trace = synth_trace(p.pop("model"), **p, **preset_params(preset))
    trace.meta["preset"] = preset
    return trace


def main(out_dir: Path = HERE) -> int:
    for name in SAMPLES:
        write_trace(make(name), out_dir / name)
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
