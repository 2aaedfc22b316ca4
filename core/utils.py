"""Small helpers shared by the trainer, the tasks and the benchmarks: atomic writes, seeds,
device choice and the command line of the decoding tools (run provenance: core/provenance.py, re-exported)."""
import argparse
import difflib
import errno
import io
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import torch


class WriteError(OSError):
    """A file could not be written; the message names it, the cause and that the previous file is intact."""

    def __str__(self):
        return self.strerror


CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exhausted",
          errno.EFBIG: "the file is larger than this process may write (a file-size limit)",
          errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write there",
          errno.EPERM: "no permission to write there", errno.ENOTDIR: "a part of the path is a file, not a folder"}


def cause_in_words(err):
    """The cause of the OSError `err` in words, then its errno's name: 'no space left on the device (ENOSPC)'."""
    return f"{CAUSES.get(err.errno, err.strerror or str(err))} ({errno.errorcode.get(err.errno, err.errno)})"


def write_error(path, err):
    """A WriteError naming `path` and the cause of the OSError `err` in words."""
    return WriteError(err.errno, f"could not write {path}: {cause_in_words(err)}; "
                                 f"the previous {Path(path).name}, if any, is intact")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clean_stale_temporaries(path):
    """Remove temporaries of `path` (ours: .<name>.<pid>.<random>.tmp) left by processes that are gone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path, write_fn, mode="w"):
    """Write through a temp file in the same folder, flushed to disk, then rename (and sync the folder): readers
    never see half a file, and a crash or power loss leaves the previous file or the new one. The file gets the
    umask's mode (not mkstemp's 0600). Any failure is a WriteError naming the file and the cause."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from err
    WRITING.add(tmp)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        WRITING.discard(tmp)


WRITING = set()  # the temporaries of writes under way: a process that must exit at once removes them first


def remove_unfinished_writes():
    """Remove the temporaries of the writes under way (before an exit that skips their own cleanup)."""
    for tmp in list(WRITING):
        Path(tmp).unlink(missing_ok=True)


def _sync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_torch(obj, path):
    """torch.save through memory, then one plain write: on a full disk torch's own writer fails with a RuntimeError
    ("unexpected pos") that names no cause, while a plain write raises the OSError that says what went wrong."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()), mode="wb")


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
