"""Machine facts for a calibrated profile: CPU model, cores, memory, caches; GPU name, driver, PCIe link.

Everything here is best effort and never raises: a fact that cannot be read is left out. The GPU facts use
torch.cuda when torch is importable and a GPU is present, and `nvidia-smi` when it is on PATH.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")
_MEMINFO = Path("/proc/meminfo")
_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's marketing name ('AMD EPYC 7763 64-Core Processor'), or the platform's processor string."""
    for line in _read(_CPUINFO).splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and val.strip():
            return " ".join(val.split())
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    for line in _read(_CPUINFO).splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()


def usable_cpus() -> list[int]:
    """Logical CPUs this process may run on (affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the usable logical CPUs (SMT siblings counted once); at least 1."""
    usable = set(usable_cpus())
    cores: set[tuple[str, str]] = set()
    proc = phys = core = None
    for line in _read(_CPUINFO).splitlines() + [""]:
        key, _, val = (s.strip() for s in line.partition(":"))
        if key == "processor":
            proc = int(val) if val.isdigit() else None
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
        elif not key:
            if proc is not None and proc in usable:
                # Without topology lines (VMs, ARM) every logical CPU counts as a core.
                cores.add((phys or "0", core if core is not None else f"cpu{proc}"))
            proc = phys = core = None
    return max(1, len(cores) if cores else len(usable))


def memory_gib() -> float:
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read(_MEMINFO), re.M)
    if m:
        return int(m.group(1)) * 1024 / 2**30
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 16.0


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache level seen by cpu0 (bytes), 0 when unknown."""
    best = 0
    for idx in sorted(_CACHE_DIR.glob("index*")):
        size = _read(idx / "size").strip()
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if m:
            best = max(best, int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])
    return best


def _nvidia_smi(index: int = 0) -> dict[str, str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    fields = ["name", "driver_version", "memory.total", "pcie.link.gen.current", "pcie.link.gen.max",
              "pcie.link.width.current", "pcie.link.width.max"]
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                              f"--id={index}"], capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    vals = [v.strip() for v in out.strip().splitlines()[0].split(",")] if out.strip() else []
    if len(vals) != len(fields):
        return {}
    return {f: v for f, v in zip(fields, vals, strict=True) if v and "N/A" not in v and "Not Supported" not in v}


def pcie_link(smi: dict[str, str]) -> str:
    """'PCIe 4.0 x16' (current link; the maximum in parentheses when the link runs below it)."""
    gen, width = smi.get("pcie.link.gen.current"), smi.get("pcie.link.width.current")
    if not gen or not width:
        return ""
    speeds = {"1": "1.0", "2": "2.0", "3": "3.0", "4": "4.0", "5": "5.0", "6": "6.0"}
    link = f"PCIe {speeds.get(gen, gen)} x{width}"
    gmax, wmax = smi.get("pcie.link.gen.max"), smi.get("pcie.link.width.max")
    if (gmax and gmax != gen) or (wmax and wmax != width):
        link += f" (max {speeds.get(gmax or gen, gmax or gen)} x{wmax or width}; idle GPUs downclock the link)"
    return link


def gpu_facts(index: int = 0) -> dict[str, str]:
    """GPU facts from torch.cuda and nvidia-smi; empty when there is no GPU or no torch."""
    facts: dict[str, str] = {}
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(index)
            facts["gpu"] = p.name
            facts["gpu_memory_gib"] = f"{p.total_memory / 2**30:.2f}"
            facts["gpu_sm_count"] = str(p.multi_processor_count)
            facts["gpu_compute_capability"] = f"{p.major}.{p.minor}"
            facts["cuda_runtime"] = str(torch.version.cuda or "")
    except Exception:  # facts are best effort
        pass
    smi = _nvidia_smi(index)
    if smi:
        facts.setdefault("gpu", smi.get("name", ""))
        if "driver_version" in smi:
            facts["gpu_driver"] = smi["driver_version"]
        link = pcie_link(smi)
        if link:
            facts["pcie_link"] = link
    return {k: v for k, v in facts.items() if v}


def machine_facts(device: str, threads: int | None = None) -> dict[str, str]:
    """Facts for `calibration.machine` (all values strings)."""
    facts = {
        "cpu": cpu_model(),
        "cpu_cores": str(physical_cores()),
        "cpu_logical": str(len(usable_cpus())),
        "memory_gib": f"{memory_gib():.1f}",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    if threads:
        facts["cpu_threads_used"] = str(threads)
    llc = last_level_cache_bytes()
    if llc:
        facts["cpu_llc_mib"] = f"{llc / 2**20:g}"
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve") if f in flags]
    if simd:
        facts["cpu_simd"] = " ".join(simd)
    try:
        import torch

        facts["torch"] = torch.__version__
    except ImportError:
        pass
    if device == "cuda":
        facts.update(gpu_facts())
    return facts
