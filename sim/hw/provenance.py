"""Readable summaries of `calibration.provenance`: where the figures of a calibrated profile come from.

`simmoe hw show` prints these lines (as YAML comments) above the profile and `simmoe calibrate` prints them
after its fit, so that a borrowed or assumed figure is never taken for a measured one.
"""

from __future__ import annotations

from collections import Counter

from simmoe.hw.profile import HwProfile, origins

HOW_ORDER = ("measured", "fitted", "borrowed", "assumed")


def origin_lines(profile: HwProfile) -> list[str]:
    """Counts of figures by origin, then every borrowed or assumed entry grouped by its source; [] when the
    profile states no provenance."""
    if profile.calibration is None or not profile.calibration.provenance:
        return []
    by_leaf = origins(profile)
    counts = Counter(how for how, _ in by_leaf.values())
    lines = ["figures by origin (calibration.provenance): "
             + ", ".join(f"{counts[h]} {h}" for h in HOW_ORDER if counts[h])]
    for how in ("borrowed", "assumed"):
        groups: dict[str, list[str]] = {}
        for key, o in profile.calibration.provenance.items():
            if o.how == how:
                groups.setdefault(o.source, []).append(key)
        for source, keys in groups.items():
            lines.append(f"  {how} ({source}): {', '.join(keys)}")
    return lines
