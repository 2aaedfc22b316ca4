"""Small helpers shared by the trainer, the tasks and the benchmarks: atomic writes, seeds,
device choice and the command line of the decoding tools (run provenance: core/provenance.py, re-exported)."""
import argparse
import difflib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import torch


def atomic_write(path, write_fn, mode="w"):
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_torch(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def rng_states_on_cpu(saved):
    """A checkpoint loaded with map_location=<cuda device> has its RNG states there too, but torch only sets
    RNG states from CPU byte tensors: bring back every value under a key naming an RNG, in nested dicts."""
    if isinstance(saved, dict):
        return {k: _on_cpu(v) if isinstance(k, str) and "rng" in k else rng_states_on_cpu(v) for k, v in saved.items()}
    return saved


def _on_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def did_you_mean(names, known):
    """' (did you mean 'x'?)' for the first of `names` close to one of `known`, else '' (for error messages)."""
    for name in names:
        near = difflib.get_close_matches(name, sorted(known), n=1)
        if near:
            return f" (did you mean {near[0]!r}?)"
    return ""


def defined_in(cls):
    """The file a class was defined in (else its module's name): what a registration clash names."""
    return getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name="auto"):
    """auto -> cuda when available, else cpu. fp32 means IEEE fp32 on every device: TF32 is switched off for
    matmuls and cuDNN (its LSTM included), so a GPU seed of an fp32 table computes what a CPU seed does."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"bad --device {name!r}: {err}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda":
        from core.precision import set_fp32_math

        set_fp32_math(tf32=False)
    return device


from core.provenance import cpu_model, git_commit, hardware, provenance, source_hash  # noqa: E402,F401 (re-exported)


# ---- the command line of the decoding tools (tasks.mt.translate, tasks.caption.describe) ----
def decoding_parser(prog, doc, checkpoint_help):
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help=checkpoint_help)
    parser.add_argument("--beam", type=int, help="beam width (default: the checkpoint's preset)")
    parser.add_argument("--device", default="auto")
    return parser


def parse_decoding_args(parser, argv):
    args = parser.parse_args(argv)
    if args.beam is not None and args.beam < 1:
        parser.error(f"--beam must be >= 1, got {args.beam}")
    return args
