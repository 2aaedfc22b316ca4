"""Numeric precision of the forward passes: fp32, TF32 matmuls (CUDA), or bf16 autocast where the device supports
it natively."""
import contextlib
import warnings
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
# /proc/cpuinfo flags of native bf16 arithmetic: AVX512_BF16 and AMX (x86), the BF16 extension (aarch64);
# amx_tile is recorded beside amx_bf16 (AMX's tiles) but is no bf16 arithmetic on its own
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def resolve_precision(precision, device):
    """The precision a run on `device` will really use: bf16 needs native support (a CPU with avx512_bf16 or
    AMX, a GPU with bf16); otherwise fp32, with one warning. "auto" is bf16 on a GPU that has it and fp32
    elsewhere: the default chosen by evidence per device (docs/performance.md; PTB `cpu` in bf16 on an H200
    was within 1% of fp32; no CPU with native bf16 was measured). "tf32": fp32 storage and TF32 matmuls and cuDNN
    on CUDA (sets torch's TF32 switches); plain fp32 elsewhere. Raises ValueError for an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("fp32", "tf32"):
        # TF32 exists on CUDA only (Ampere and later): elsewhere "tf32" is plain fp32, and recorded as such
        resolved = "tf32" if precision == "tf32" and device.type == "cuda" else "fp32"
        if device.type == "cuda":  # the switches are global: set them for this process's run
            set_fp32_math(tf32=resolved == "tf32")
        return resolved
    if not native_bf16(device):
        warnings.warn(f"--precision bf16: this {device.type.upper()} has no native bf16 support (bf16 would be "
                      "emulated, slower than fp32): running in fp32", stacklevel=2)
        return "fp32"
    return precision


def read_cpuinfo():
    """The text of /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        return CPUINFO.read_text()
    except OSError:
        return None


def cpu_bf16_flags(cpuinfo=None):
    """The bf16 flags (BF16_FLAGS) of the first processor in `cpuinfo` (its text; None: this machine's
    /proc/cpuinfo): a list, empty for a CPU without them, or None where there is no /proc/cpuinfo."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, aarch64
            present = set(line.partition(":")[2].split())
            return [flag for flag in BF16_FLAGS if flag in present]
    return []


def native_bf16(device, cpuinfo=None):
    """Whether `device` does bf16 arithmetic natively: a GPU with bf16; a CPU with avx512_bf16, amx_bf16 (or
    aarch64's bf16) in /proc/cpuinfo. Not oneDNN's own check, which also says yes for plain AVX-512 (where it
    emulates bf16, slower than fp32); without /proc/cpuinfo (not Linux) that check is all there is."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_bf16_flags(cpuinfo)
    if flags is None:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return flags_say_native_bf16(flags)


def flags_say_native_bf16(flags):
    """Whether a list of cpu_bf16_flags has one of native bf16 arithmetic (amx_tile alone is not)."""
    return any(flag in NATIVE_BF16_FLAGS for flag in flags)


def set_fp32_math(tf32):
    """IEEE fp32 (tf32=False) or TF32 for CUDA's fp32 matmuls and cuDNN, its LSTM included. Through the
    `fp32_precision` switches where torch has them (2.9+, what its kernels read; allow_tf32 elsewhere). There
    cuDNN's RNN and convolution have switches of their own, "tf32" by default, which the cuDNN-wide switch does not
    override: all three are set (tests/test_precision.py)."""
    value = "tf32" if tf32 else "ieee"
    if has_fp32_precision_api():
        torch.backends.cuda.matmul.fp32_precision = value
        for switch in (torch.backends.cudnn, torch.backends.cudnn.rnn, torch.backends.cudnn.conv):
            switch.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32


def fp32_math(device):
    """The precision fp32 math runs at now on `device`: on CUDA {"matmul": "ieee" | "tf32", "cudnn": ...} (cuDNN's
    LSTM), on a CPU {"matmul": oneDNN's setting}. Recorded in every run's provenance (the switches are global)."""
    api = has_fp32_precision_api()
    if torch.device(device).type != "cuda":
        return {"matmul": _effective(torch.backends.mkldnn.matmul.fp32_precision if api else "ieee")}
    if api:  # the values as resolved through their parents
        return {"matmul": _effective(torch.backends.cuda.matmul.fp32_precision),
                "cudnn": _effective(torch.backends.cudnn.rnn.fp32_precision)}
    return {"matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "cudnn": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"}


def _effective(value):
    return "ieee" if value == "none" else value  # "none": nothing set anywhere, which torch runs as IEEE


def has_fp32_precision_api():
    return hasattr(torch.backends.cudnn, "rnn") and hasattr(torch.backends.cuda.matmul, "fp32_precision")


def autocast(precision, device):
    """The context of every forward pass: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
