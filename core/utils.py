"""Small helpers shared by the trainer, the tasks and the benchmarks: atomic writes, seeds,
device choice, run provenance and the command line of the decoding tools."""
import argparse
import json
import os
import platform
import random
import shlex
import subprocess
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
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


# Changes that cannot alter a number: the tables the runner itself rewrites, and the docs.
NOT_CODE = (":(exclude)results", ":(exclude)*.md")


def git_commit(root=Path(__file__).resolve().parent.parent):
    """HEAD, marked "-dirty" when a tracked file that can change a result (code, config, tests) differs from it;
    a run started while the tables or the README were being edited keeps the clean commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE],
                               cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):  # an export without .git: its commit may be given
        return os.environ.get("RNNREG_GIT_COMMIT", "unknown")
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device):
    device = torch.device(device)
    desc = {"device": str(device), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def provenance(device, command=None):
    """Where a number came from: the command, the code, the software and the machine."""
    return {
        "command": command or shlex.join([sys.executable] + sys.argv),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **hardware(device),
    }


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
