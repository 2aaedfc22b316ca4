"""Numeric precision of the forward passes: fp32, TF32 matmuls (CUDA), or bf16 autocast where the device supports
it natively."""
import contextlib
import warnings

import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16")


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
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = resolved == "tf32"
        return resolved
    native = (torch.cuda.is_bf16_supported() if device.type == "cuda"
              else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not native:
        warnings.warn(f"--precision bf16: this {device.type.upper()} has no native bf16 support (bf16 would be "
                      "emulated, slower than fp32): running in fp32", stacklevel=2)
        return "fp32"
    return precision


def autocast(precision, device):
    """The context of every forward pass: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
