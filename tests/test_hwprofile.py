"""Hardware profiles: the bundled datasheet profiles, the strict schema's errors, and `simmoe hw`."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from conftest import assert_clean_error

from simmoe.errors import InputError
from simmoe.hw.profile import (
    HwProfile,
    builtin_dir,
    dump_profile,
    list_profiles,
    load_profile,
    profile_from_dict,
    resolve_profile_path,
)

EXPECTED = [
    "rtx3060-laptop", "rtx3090", "rtx4090", "rtx-a6000", "l4", "t4",
    "a100-40gb-pcie", "a100-80gb-sxm", "h100-pcie", "h100-sxm", "jetson-agx-orin",
    # machines people run MoE offloading on (issue 14)
    "rtx3060", "rtx3080-laptop", "rtx2080ti", "quadro-rtx6000", "rtx4060ti-16gb", "rtx4070", "rtx4080",
    "rtx5090", "a10g", "l40s", "h200-sxm", "apple-m3-ultra", "apple-m4-max",
    "a100-80gb-pcie-2s-epyc", "h100-pcie-2s-xeon",
    # several GPUs (issue 18): a topology: section
    "2x-rtx3090", "8x-l40s-pcie-switch",
]

# Unified memory: CPU and GPU share one DRAM pool, there is no PCIe link.
UNIFIED = {"jetson-agx-orin", "apple-m3-ultra", "apple-m4-max"}
# GPUs without matrix units: their fp16/bf16 GEMMs run at the plain ALU (fp32) rate.
NO_TENSOR_CORES = {"apple-m3-ultra", "apple-m4-max"}
# Turing: fp16 tensor cores, no bf16 (a bf16 model runs with fp16 weights).
NO_BF16 = {"t4", "rtx2080ti", "quadro-rtx6000"}
# Two-socket hosts: cores and memory_gib are both sockets', memory_gbps is one socket's (an expert's weights
# live in one NUMA node): profile -> (one socket's GB/s, cores per socket).
TWO_SOCKET = {"a100-80gb-pcie-2s-epyc": (204.8, 64), "h100-pcie-2s-xeon": (307.2, 56),
              "8x-l40s-pcie-switch": (140.8, 20)}

# Raw PCIe bandwidth per direction after line encoding, GB/s: measured pinned rates must stay below.
LINK_CEILING_GBPS = {"PCIe 3.0 x16": 15.75, "PCIe 4.0 x16": 31.5, "PCIe 5.0 x16": 63.0,
                     "PCIe 3.0 x8": 7.88, "PCIe 4.0 x8": 15.75, "PCIe 5.0 x8": 31.5}


def _raw(name: str) -> dict:
    return yaml.safe_load((builtin_dir() / f"{name}.yaml").read_text())


# ---- the bundled profiles ---------------------------------------------------------------------------------
def test_list_profiles_has_all_bundled():
    names = list_profiles()
    assert set(EXPECTED) <= set(names), sorted(set(EXPECTED) - set(names))
    assert names == sorted(names)
    assert "README" not in names


@pytest.mark.parametrize("name", EXPECTED)
def test_bundled_profile_loads_and_is_sane(name):
    p = load_profile(name)
    assert isinstance(p, HwProfile)
    assert p.name == name  # file name = profile name
    assert p.source == "datasheet"
    assert p.references and all(r.strip() for r in p.references)
    assert p.description
    assert p.price_usd_per_hour is not None and p.price_usd_per_hour > 0
    assert p.price_source and re.search(r"20\d\d", p.price_source), "price needs a date"
    assert "estimate" in p.price_source.lower() or "approximate" in p.price_source.lower() \
        or "on-demand" in p.price_source.lower()

    g = p.gpu
    assert 0 < p.usable_gpu_bytes < p.gpu_memory_bytes
    assert p.gpu_memory_bytes == int(g.memory_gib * 2**30)
    assert 0 <= g.reserved_gib < g.memory_gib
    assert 100 <= g.hbm_gbps <= 5000
    assert "fp32" in g.peak_tflops
    assert "fp16" in g.peak_tflops
    tensor = g.peak_tflops.get("bf16", g.peak_tflops["fp16"])
    if name in NO_TENSOR_CORES:
        assert tensor == g.peak_tflops["fp32"], "no matrix units: fp16/bf16 run at the ALU rate"
    else:
        assert tensor > g.peak_tflops["fp32"], "tensor-core peak below the CUDA-core peak"
    assert ("bf16" in g.peak_tflops) == (name not in NO_BF16)
    if "int8" in g.peak_tflops:
        assert g.peak_tflops["int8"] >= g.peak_tflops["fp16"]
    if "fp8" in g.peak_tflops:
        assert g.peak_tflops["fp8"] >= g.peak_tflops["fp16"]
    assert g.sm_count is not None and g.sm_count >= 1

    c = p.pcie
    assert c.h2d_pinned_gbps > c.h2d_pageable_gbps
    assert c.d2h_pinned_gbps > c.d2h_pageable_gbps
    assert c.copy_engines >= 1
    for link, ceiling in LINK_CEILING_GBPS.items():
        if c.link.startswith(link):
            assert c.h2d_pinned_gbps < ceiling and c.d2h_pinned_gbps < ceiling, (link, c)

    cpu = p.cpu
    assert cpu.cores >= 1 and cpu.memory_gib > 0 and cpu.memory_gbps > 0 and cpu.peak_gflops > 0
    # A CPU core peaks at well under 2.5 TFLOP/s even with AMX; catch unit slips (TFLOP/s vs GFLOP/s).
    assert 10 < cpu.peak_gflops / cpu.cores < 2500
    # GPU memory is far faster than host memory, except on a unified-memory device where they are one.
    assert g.hbm_gbps >= cpu.memory_gbps

    assert p.host.launch_overhead_us > 0


def test_bundled_files_are_named_after_their_profile():
    for path in builtin_dir().glob("*.yaml"):
        assert _raw(path.stem)["name"] == path.stem, path


def test_bundled_files_give_the_documented_sections():
    for name in EXPECTED:
        raw = _raw(name)
        for key in ("name", "description", "source", "references", "price_usd_per_hour", "price_source",
                    "gpu", "host", "pcie", "cpu"):
            assert key in raw, (name, key)
        for key in ("memory_gib", "reserved_gib", "hbm_gbps", "peak_tflops", "matmul_efficiency",
                    "membw_efficiency", "kernel_min_us", "unified_memory", "sm_count"):
            assert key in raw["gpu"], (name, key)
        for key in ("link", "latency_us", "copy_engines"):
            assert key in raw["pcie"], (name, key)


def test_unified_memory_only_on_jetson_and_apple():
    j = load_profile("jetson-agx-orin")
    assert j.gpu.unified_memory is True
    assert j.gpu.hbm_gbps == pytest.approx(204.8)
    assert j.nvme is not None
    for name in EXPECTED:
        p = load_profile(name)
        assert p.gpu.unified_memory is (name in UNIFIED), name
        if name in UNIFIED:
            # one pool, described twice: same size and bandwidth on both sides, and no PCIe link
            assert p.cpu.memory_gib == p.gpu.memory_gib and p.cpu.memory_gbps == p.gpu.hbm_gbps, name
            assert p.pcie.link.startswith("none"), name
            # a copy inside one DRAM reads and writes it: at most half its bandwidth
            assert p.pcie.h2d_pinned_gbps <= p.gpu.hbm_gbps / 2, name


def test_turing_has_no_bf16_and_falls_back_to_fp16():
    for name in NO_BF16:
        p = load_profile(name)
        assert p.peak_flops("bf16") == pytest.approx(p.gpu.peak_tflops["fp16"] * 1e12), name
        assert p.peak_flops("fp8") == p.peak_flops("bf16"), name  # no fp8 either
    # GeForce Turing: fp16 tensor cores with FP32 accumulate at half rate; Quadro at full rate
    assert load_profile("rtx2080ti").gpu.peak_tflops["fp16"] == pytest.approx(53.8)
    assert load_profile("quadro-rtx6000").gpu.peak_tflops["fp16"] == pytest.approx(130.5)


def test_two_socket_hosts_give_both_sockets_cores_and_one_sockets_bandwidth():
    for name, (socket_gbps, socket_cores) in TWO_SOCKET.items():
        c = load_profile(name).cpu
        assert c.cores == 2 * socket_cores, name
        assert c.memory_gbps == pytest.approx(socket_gbps), name  # not 2x: an expert lives in one node


def test_laptop_has_nvme_and_t4_has_no_bf16():
    lap = load_profile("rtx3060-laptop")
    assert lap.nvme is not None and lap.nvme.read_gbps == pytest.approx(3.5)
    assert lap.gpu.memory_gib == pytest.approx(6.0)
    t4 = load_profile("t4")
    assert "bf16" not in t4.gpu.peak_tflops
    assert t4.peak_flops("bf16") == pytest.approx(65e12)  # falls back to the fp16 rate
    assert t4.pcie.link.startswith("PCIe 3.0")


def test_relative_order_of_key_figures():
    h100, a100, l4 = load_profile("h100-sxm"), load_profile("a100-80gb-sxm"), load_profile("l4")
    assert h100.gpu.hbm_gbps > a100.gpu.hbm_gbps > l4.gpu.hbm_gbps
    assert h100.peak_flops("bf16") > a100.peak_flops("bf16") > l4.peak_flops("bf16")
    assert h100.pcie.h2d_pinned_gbps > 2 * a100.pcie.h2d_pinned_gbps  # Gen5 vs Gen4
    assert load_profile("rtx4090").peak_flops("bf16") > load_profile("rtx3090").peak_flops("bf16")
    # issue 14 machines
    h200 = load_profile("h200-sxm")
    assert h200.gpu.hbm_gbps > h100.gpu.hbm_gbps and h200.gpu.memory_gib > h100.gpu.memory_gib
    assert h200.peak_flops("bf16") == h100.peak_flops("bf16")  # same GH100 compute
    r5090, r4090 = load_profile("rtx5090"), load_profile("rtx4090")
    assert r5090.pcie.h2d_pinned_gbps > 2 * 0.95 * r4090.pcie.h2d_pinned_gbps  # Gen5 vs Gen4 x16
    assert r5090.gpu.hbm_gbps > r4090.gpu.hbm_gbps
    # the 4060 Ti has 8 lanes: half the copy bandwidth of the x16 RTX 4070
    assert load_profile("rtx4060ti-16gb").pcie.h2d_pinned_gbps < 0.6 * load_profile("rtx4070").pcie.h2d_pinned_gbps
    # data-centre Ada (L40S) runs FP32 accumulate at full rate, GeForce Ada at half
    l40s, r4080 = load_profile("l40s").gpu.peak_tflops, load_profile("rtx4080").gpu.peak_tflops
    assert l40s["bf16"] / l40s["fp32"] > 3.5 and r4080["bf16"] / r4080["fp32"] == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("name", EXPECTED)
def test_dump_round_trips(name):
    p = load_profile(name)
    text = dump_profile(p)
    back = profile_from_dict(yaml.safe_load(text), "dump")
    assert back == p
    assert "native_launch_us" in text  # defaults are written out


# ---- resolution -------------------------------------------------------------------------------------------
def test_name_resolves_to_builtin_and_path_to_file(tmp_path, monkeypatch):
    assert resolve_profile_path("rtx3090") == builtin_dir() / "rtx3090.yaml"
    f = tmp_path / "box.yaml"
    f.write_text((builtin_dir() / "t4.yaml").read_text())
    assert resolve_profile_path(str(f)) == f
    assert load_profile(f).name == "t4"
    # A folder in the working directory named like a built-in profile does not hide it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rtx3090").mkdir()
    assert load_profile("rtx3090").name == "rtx3090"
    # ...but a bare name that is an existing file is read as that file.
    (tmp_path / "mybox").write_text((builtin_dir() / "l4.yaml").read_text())
    assert load_profile("mybox").name == "l4"


# ---- bad input: one InputError naming the file and the field ----------------------------------------------
def _write(tmp_path: Path, data: object, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _error(path: Path) -> InputError:
    with pytest.raises(InputError) as ei:
        load_profile(path)
    e = ei.value
    assert e.source == str(path), e.line()
    assert str(path) in e.line()
    return e


def _base() -> dict:
    return copy.deepcopy(_raw("rtx3090"))


def test_unknown_top_level_key(tmp_path):
    d = _base()
    d["gpu_name"] = "x"
    e = _error(_write(tmp_path, d))
    assert e.field == "gpu_name"
    assert "unknown key" in e.message


def test_unknown_nested_key_suggests_spelling(tmp_path):
    d = _base()
    d["pcie"]["h2d_pined_gbps"] = d["pcie"].pop("h2d_pinned_gbps")
    e = _error(_write(tmp_path, d))
    assert e.field == "pcie.h2d_pined_gbps"  # the typo, not the "missing" correct key
    assert "unknown key" in e.message and "h2d_pinned_gbps" in e.message


def test_unknown_dtype_in_peak_tflops(tmp_path):
    d = _base()
    d["gpu"]["peak_tflops"]["bf61"] = 70.0
    e = _error(_write(tmp_path, d))
    assert e.field == "gpu.peak_tflops.bf61"
    assert "unknown key" in e.message


@pytest.mark.parametrize(("section", "key", "value"), [
    ("pcie", "h2d_pinned_gbps", -24.5),
    ("pcie", "d2h_pageable_gbps", 0),
    ("gpu", "hbm_gbps", -936.0),
    ("gpu", "hbm_gbps", float("inf")),
    ("cpu", "memory_gbps", float("nan")),
    ("gpu", "matmul_efficiency", 1.5),
    ("host", "launch_overhead_us", -1),
    ("nvme", "read_gbps", -6.5),
    ("cpu", "cores", 0),
])
def test_out_of_range_values(tmp_path, section, key, value):
    d = _base()
    d[section][key] = value
    e = _error(_write(tmp_path, d))
    assert e.field == f"{section}.{key}"


def test_negative_peak(tmp_path):
    d = _base()
    d["gpu"]["peak_tflops"]["bf16"] = -71
    assert _error(_write(tmp_path, d)).field == "gpu.peak_tflops.bf16"


def test_empty_peak_table(tmp_path):
    d = _base()
    d["gpu"]["peak_tflops"] = {}
    assert _error(_write(tmp_path, d)).field == "gpu.peak_tflops"


@pytest.mark.parametrize("reserved", [24.0, 30.0])
def test_reserved_not_below_memory(tmp_path, reserved):
    d = _base()
    d["gpu"]["reserved_gib"] = reserved
    e = _error(_write(tmp_path, d))
    assert e.field == "gpu.reserved_gib"
    assert "memory_gib" in e.message


def test_reserved_just_below_memory_is_fine(tmp_path):
    d = _base()
    d["gpu"]["reserved_gib"] = 23.9
    p = load_profile(_write(tmp_path, d))
    assert p.usable_gpu_bytes == int((24.0 - 23.9) * 2**30)


@pytest.mark.parametrize(("section", "key"), [
    ("cpu", "memory_gbps"),
    ("gpu", "hbm_gbps"),
    ("pcie", "h2d_pageable_gbps"),
    (None, "pcie"),
    (None, "source"),
])
def test_missing_required_field(tmp_path, section, key):
    d = _base()
    (d[section] if section else d).pop(key)
    e = _error(_write(tmp_path, d))
    assert e.field == (f"{section}.{key}" if section else key)
    assert "required" in e.message.lower()


def test_calibrated_needs_calibration_section(tmp_path):
    d = _base()
    d["source"] = "calibrated"
    e = _error(_write(tmp_path, d))
    assert e.field == "calibration"
    d["calibration"] = {"date": "2026-11-23", "machine": {"gpu": "RTX 3090"}}  # bare date -> string
    e = _error(_write(tmp_path, d))  # ... and the origin of every figure
    assert e.field == "calibration" and "provenance: no origin stated for gpu.name" in e.message
    d["calibration"]["provenance"] = {k: {"how": "borrowed", "source": "test"} for k in (
        "gpu", "host", "pcie", "cpu", "nvme", "kernels", "price_usd_per_hour")}
    assert load_profile(_write(tmp_path, d)).calibration.date == "2026-11-23"


def test_bad_source_value(tmp_path):
    d = _base()
    d["source"] = "measured"
    assert _error(_write(tmp_path, d)).field == "source"


def test_kernel_table_checked(tmp_path):
    d = _base()
    d["kernels"] = {"expert_ffn_gpu": {"4096x14336xswiglu:bf16": {"tokens": [1, 4, 2], "us": [1.0, 2.0, 3.0]}}}
    e = _error(_write(tmp_path, d))
    assert e.field.startswith("kernels.expert_ffn_gpu")
    assert "increasing" in e.message
    d["kernels"]["expert_ffn_gpu"]["4096x14336xswiglu:bf16"]["tokens"] = [1, 2, 4]
    p = load_profile(_write(tmp_path, d))
    assert p.kernels.expert_ffn_gpu["4096x14336xswiglu:bf16"].us == [1.0, 2.0, 3.0]


def test_not_yaml(tmp_path):
    e = _error(_write(tmp_path, "name: x\ngpu: [unclosed\n"))
    assert "not valid YAML" in e.message
    assert e.field and e.field.startswith("line ")


def test_not_a_mapping(tmp_path):
    assert "mapping" in _error(_write(tmp_path, "- a\n- b\n")).message
    assert "mapping" in _error(_write(tmp_path, "", "empty.yaml")).message


def test_binary_file(tmp_path):
    path = tmp_path / "trace.yaml"
    path.write_bytes(b"\x93NUMPY\x01\x00\xff\xfe\x00binary")
    assert "not valid YAML" in _error(path).message


def test_duplicate_key(tmp_path):
    text = (builtin_dir() / "rtx3090.yaml").read_text().replace(
        "  h2d_pinned_gbps: 24.5", "  h2d_pinned_gbps: 24.5\n  h2d_pinned_gbps: 2.45", 1)
    assert text.count("h2d_pinned_gbps:") == 2
    e = _error(_write(tmp_path, text))
    assert "duplicate key" in e.message and "h2d_pinned_gbps" in e.message


def test_file_not_found(tmp_path):
    path = tmp_path / "missing.yaml"
    e = _error(path)
    assert "not found" in e.message


def test_unknown_profile_name():
    with pytest.raises(InputError) as ei:
        load_profile("rtx9090")
    e = ei.value
    assert e.source == "rtx9090"
    assert "no such hardware profile" in e.message
    assert "rtx3090" in e.message  # lists the built-in names


# ---- CLI, through the real entry point -------------------------------------------------------------------
def test_cli_hw_list(simmoe_cli):
    res = simmoe_cli("hw", "list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = lines[0]
    for title in ("name", "GPU", "memory GiB", "HBM GB/s", "bf16 TFLOP/s", "H2D pinned GB/s", "source", "$/h"):
        assert title in header
    rows = {ln.split()[0]: ln for ln in lines[2:] if ln.strip()}
    assert set(EXPECTED) <= set(rows)
    assert "24.00" in rows["rtx3090"] and "936.2" in rows["rtx3090"] and "datasheet" in rows["rtx3090"]
    for name in NO_BF16:
        assert " - " in rows[name]  # no bf16 on Turing
    # `simmoe hw` with no subcommand is the same table.
    assert simmoe_cli("hw").stdout == res.stdout


def test_cli_hw_show_round_trips(simmoe_cli):
    res = simmoe_cli("hw", "show", "rtx3090")
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load(res.stdout)
    assert profile_from_dict(data, "stdout") == load_profile("rtx3090")
    # defaults are filled in
    assert data["host"]["native_launch_us"] == 3.0
    assert data["nvme"]["read_gbps"] == pytest.approx(6.5)


def test_cli_hw_show_path(simmoe_cli, tmp_path):
    d = _base()
    d["name"] = "my-box"
    path = _write(tmp_path, d, "my-box.yaml")
    res = simmoe_cli("hw", "show", str(path))
    assert res.returncode == 0, res.stderr
    assert profile_from_dict(yaml.safe_load(res.stdout), "stdout").name == "my-box"


def test_cli_hw_show_bad_profile_is_one_line(simmoe_cli, tmp_path):
    d = _base()
    d["pcie"]["h2d_pined_gbps"] = d["pcie"].pop("h2d_pinned_gbps")
    path = _write(tmp_path, d)
    res = simmoe_cli("hw", "show", str(path))
    assert_clean_error(res, str(path), "pcie.h2d_pined_gbps", "unknown key")
    assert res.stdout == ""


def test_cli_hw_show_unknown_name_and_missing_file(simmoe_cli, tmp_path):
    assert_clean_error(simmoe_cli("hw", "show", "rtx9090"), "rtx9090", "no such hardware profile")
    missing = tmp_path / "nope.yaml"
    assert_clean_error(simmoe_cli("hw", "show", str(missing)), str(missing), "not found")


def test_attention_table_checked(tmp_path):
    d = _base()
    key = "attn:4096x32x8x128:bf16"
    d["kernels"] = {"attention_gpu": {key: {"tokens": [1, 4], "context": [32, 128], "us": [[1.0, 2.0]]}}}
    e = _error(_write(tmp_path, d))
    assert e.field.startswith("kernels.attention_gpu") and "one row per context" in e.message
    d["kernels"]["attention_gpu"][key]["us"] = [[1.0, 2.0], [3.0, 4.0]]
    d["kernels"]["attention_gpu"][key]["context"] = [128, 32]
    assert "context must be strictly increasing" in _error(_write(tmp_path, d)).message
    d["kernels"]["attention_gpu"][key]["context"] = [32, 128]
    p = load_profile(_write(tmp_path, d))
    assert p.kernels.attention_gpu[key].us == [[1.0, 2.0], [3.0, 4.0]]
    d["kernels"]["router_gpu"] = {"router:4096x8x2:bf16": {"tokens": [1], "us": [1.0], "context": [32]}}
    assert _error(_write(tmp_path, d)).field.startswith("kernels.router_gpu")  # no context outside attention
