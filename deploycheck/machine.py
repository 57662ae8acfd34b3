"""The machine fingerprint: what decides which kernels run, so results can be told apart by runner.

Two x86 CI runners can run the same wheel on different instruction sets: float summation order
and int8 dot products (u8 x s8 with a 16-bit intermediate that saturates without VNNI) then give
different numbers. The fingerprint records the CPU, its ISA level, torch's effective CPU
capability (``ATEN_CPU_CAPABILITY`` lowers it), oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``), the
quantized engine, library versions and threads. It goes into the JSON report, every snapshot
entry, every manifest and the cache keys.

:func:`isa_class` condenses it to the key under which snapshots are approved: machines of one
class run the same kernels. An emulated class (an environment variable lowered the ISA) is named
as such, so it never passes for the real hardware.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
from typing import Any

# From the most to the least capable; the first one whose flags are all present is the level.
_LEVELS = (
    ("amx", ("amx_tile", "amx_int8", "avx512_vnni")),
    ("avx512_vnni", ("avx512f", "avx512bw", "avx512_vnni")),
    ("avx512", ("avx512f", "avx512bw")),
    ("avx_vnni", ("avx2", "avx_vnni")),
    ("avx2", ("avx2", "fma")),
)
#: ISA levels whose int8 dot products accumulate in 32 bits (no 16-bit saturation)
VNNI_LEVELS = ("amx", "avx512_vnni", "avx_vnni")
#: the environment variables that change which kernels run (recorded, and part of the cache keys)
KERNEL_ENV = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MKL_ENABLE_INSTRUCTIONS",
    "KMP_AFFINITY",
)
# ONEDNN_MAX_CPU_ISA values (lowercased) that still allow VNNI int8 kernels
_ONEDNN_VNNI = (
    "avx2_vnni",
    "avx2_vnni_2",
    "avx512_core_vnni",
    "avx512_core_bf16",
    "avx512_core_fp16",
    "avx512_core_amx",
    "avx512_core_amx_fp16",
    "avx10_1_512",
    "avx10_1_512_amx",
    "avx10_1_512_amx_fp16",
    "all",
    "default",
)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    """Vendor, model name and flags from /proc/cpuinfo (Linux); empty elsewhere."""
    out: dict[str, Any] = {"vendor": None, "model": None, "flags": ()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 16)
    except OSError:
        return out
    for key, name in (("vendor", "vendor_id"), ("model", "model name")):
        m = re.search(rf"^{name}\s*:\s*(.+)$", text, re.M)
        out[key] = m.group(1).strip() if m else None
    m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    out["flags"] = tuple(sorted(set(m.group(1).split()))) if m else ()
    return out


def hardware_level(flags) -> str:
    """The CPU's own ISA level from its flags (before any emulation)."""
    fl = set(flags)
    for level, need in _LEVELS:
        if all(f in fl for f in need):
            return level
    return "default"


def _onednn_version() -> str | None:
    import torch

    m = re.search(r"(?:MKL-DNN|oneDNN)\s+v?([\d.]+)", torch.__config__.show())
    return m.group(1) if m else None


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def effective_level(hw: str, capability: str, onednn_cap: str | None) -> str:
    """What the kernels may use once torch's capability and oneDNN's cap are applied."""
    cap = capability.lower()
    if cap == "default" or hw == "default":
        return "default"
    if cap == "avx2":
        level = "avx_vnni" if hw == "avx_vnni" else "avx2"
    else:
        level = hw
    if onednn_cap:
        c = onednn_cap.lower()
        if c not in _ONEDNN_VNNI and level in VNNI_LEVELS:
            level = "avx512" if c.startswith("avx512") else "avx2"
        elif c.startswith(("sse", "avx2")) and level.startswith(("avx512", "amx")):
            level = "avx_vnni" if c.startswith("avx2_vnni") else "avx2"
    return level


#: the CPU flags a fingerprint lists
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")

#: the fingerprint this process reports instead of taking its own: an xdist controller adopts its
#: workers' (they ran the models; the controller would import torch only to write it down)
_ADOPTED: dict | None = None


def adopt(fp: Any) -> None:
    """Report ``fp`` (a worker's :func:`fingerprint`) from now on in this process."""
    global _ADOPTED
    if isinstance(fp, dict) and isinstance(fp.get("arch"), str):
        _ADOPTED = dict(fp)


def fingerprint(*, light: bool = False) -> dict:
    """The machine as far as kernel results are concerned (imports torch: call at run time).
    ``light``: where torch is not imported yet, the fields only torch knows are None (the
    report written before the first result), instead of importing it."""
    if _ADOPTED is not None:
        return dict(_ADOPTED)
    if light and "torch" not in sys.modules:
        # what the environment says, without torch: its capability follows ATEN_CPU_CAPABILITY
        # (else the hardware's best), the versions and threads are filled in at the end
        return _describe(
            os.environ.get("ATEN_CPU_CAPABILITY"),
            {
                "quantized_engine": None,
                "torch": None,
                "onednn": None,
                "threads": None,
                "interop_threads": None,
                "pending": "torch's capability, versions and threads are recorded when the session ends",
            },
        )
    return dict(_measured())


@functools.lru_cache(maxsize=1)
def _measured() -> dict:
    import torch

    return _describe(
        torch.backends.cpu.get_cpu_capability(),
        {
            "quantized_engine": torch.backends.quantized.engine,
            "torch": torch.__version__,
            "onednn": _onednn_version(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        },
    )


def _describe(capability: str | None, torch_facts: dict) -> dict:
    """The fingerprint from the CPU, the environment and torch's ``capability`` (the light one
    reads it from ATEN_CPU_CAPABILITY), with ``torch_facts``: one rule for both, so a report
    written before torch was imported names the same machine class as the final one."""
    cpu = _cpuinfo()
    hw = hardware_level(cpu["flags"])
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    level = effective_level(hw, capability or "", onednn_cap)
    env = {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}
    return {
        "arch": platform.machine(),
        "cpu_vendor": cpu["vendor"],
        "cpu_model": cpu["model"],
        "cpu_count": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in cpu["flags"]],
        "isa_level": hw,
        "effective_isa": level,
        "vnni": level in VNNI_LEVELS,
        "torch_cpu_capability": capability,
        "onednn_max_cpu_isa": onednn_cap,
        "onnxruntime": _dist_version("onnxruntime"),
        "emulated": bool(level != hw or "ATEN_CPU_CAPABILITY" in env or onednn_cap),
        "env": env,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "node": platform.node(),
        **torch_facts,
    }


def isa_class(fp: dict | None = None) -> str:
    """The snapshot class: machines of one class run the same kernels (e.g. ``x86_64/avx512_vnni``).

    Emulation is part of the name (``x86_64/avx2 (emulated on avx512_vnni)``): torch's kernels
    follow the environment, onnxruntime's and fbgemm's follow the hardware, so an emulated run is
    its own class."""
    fp = fp or fingerprint()
    name = f"{fp['arch']}/{fp['effective_isa']}"
    if fp.get("emulated"):
        name += f" (emulated on {fp['isa_level']})"
    return name


#: fingerprint keys that can change a number (cache keys add the architecture)
NUMERIC_KEYS = (
    "cpu_vendor",
    "cpu_model",
    "isa_level",
    "effective_isa",
    "torch_cpu_capability",
    "onednn_max_cpu_isa",
    "quantized_engine",
    "torch",
    "onednn",
    "onnxruntime",
    "env",
)


def kernel_key(fp: dict | None = None) -> dict:
    """The part of the fingerprint that can change a number: for cache keys."""
    fp = fp or fingerprint()
    return {k: fp.get(k) for k in ("arch", *NUMERIC_KEYS)}


def snapshot_machine(fp: dict | None = None) -> dict:
    """The fingerprint as stored in a snapshot entry: what made the numbers, nothing host-specific."""
    fp = fp or fingerprint()
    return {k: fp.get(k) for k in NUMERIC_KEYS if fp.get(k) not in (None, {}, "")}


def summary(fp: dict | None = None) -> str:
    """One line for the terminal summary and report headers."""
    fp = fp or fingerprint()
    cpu = " ".join(x for x in (fp.get("cpu_vendor"), fp.get("cpu_model")) if x) or fp.get("arch") or "unknown CPU"
    parts = [
        f"{cpu} ({fp.get('cpu_count')} cpus)",
        f"class {isa_class(fp)}",
        f"torch {fp.get('torch')} capability {fp.get('torch_cpu_capability')}",
        f"quantized engine {fp.get('quantized_engine')}",
        f"oneDNN {fp.get('onednn') or '?'}",
        f"onnxruntime {fp.get('onnxruntime') or 'not installed'}",
        f"{fp.get('threads')} threads",
    ]
    if fp.get("env"):
        parts.append(" ".join(f"{k}={v}" for k, v in sorted(fp["env"].items())))
    return "machine: " + "; ".join(parts)


def saturation_risk(fp: dict | None = None) -> bool:
    """True where int8 dot products use 16-bit intermediates (x86 without VNNI)."""
    fp = fp or fingerprint()
    return fp.get("arch") in ("x86_64", "AMD64", "i686") and not fp.get("vnni")


def scope_mismatch(scope, fp: dict | None = None) -> str | None:
    """Why this machine is not one a latency ceiling's ``machines`` scope names, or None when it
    is (every key given must match). ``scope`` is a spec ``MachineScope``."""
    fp = fp or fingerprint()
    why = []
    levels = scope.isa_levels()
    if levels and fp.get("effective_isa") not in levels:
        why.append(f"ISA {fp.get('effective_isa')}, not {' or '.join(levels)}")
    if scope.min_cores is not None and (fp.get("cpu_count") or 0) < scope.min_cores:
        why.append(f"{fp.get('cpu_count')} CPUs, fewer than min_cores {scope.min_cores}")
    if scope.arch is not None and fp.get("arch") != scope.arch:
        why.append(f"arch {fp.get('arch')}, not {scope.arch}")
    if scope.cpu_model is not None and scope.cpu_model.lower() not in (fp.get("cpu_model") or "").lower():
        why.append(f"CPU {fp.get('cpu_model') or 'unknown'!r}, not {scope.cpu_model!r}")
    return "this machine has " + "; ".join(why) if why else None
