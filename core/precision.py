"""Numeric precision of the forward passes: fp32, or bf16 autocast where the device supports it natively."""
import contextlib
import warnings

import torch

PRECISIONS = ("fp32", "bf16")


def resolve_precision(precision, device):
    """The precision a run on `device` will really use: bf16 needs native support (a CPU with avx512_bf16 or
    AMX, a GPU with bf16); otherwise fp32, with one warning. Raises ValueError for an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return precision
    device = torch.device(device)
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
