"""The flags the commands share, each declared by one add_* function and resolved by one resolve_* function,
and the run-dir guard of the runner."""
import importlib
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from core.allocator import keep_freed_memory
from core.locks import Locked, lock_run_dir
from core.download import ENV_DATA_DIR
from core.precision import PRECISIONS, resolve_precision
from core.utils import cause_in_words, defined_in, pick_device
from tasks.base import ENV_USER_DIR, TASKS, UNAVAILABLE, load_tasks


def add_user_dir_flag(parser):
    parser.add_argument("--user-dir", action="append", metavar="DIR",
                        help=f"a folder of your own task adapters (@register'ed Task subclasses), imported before the "
                             f"built-in tasks (repeatable; default: ${ENV_USER_DIR}, os.pathsep-separated)")


def add_device_flag(parser, default="auto", jobs=False):
    where = "the jobs' device: " if jobs else ""
    parser.add_argument("--device", default=default, help=f"{where}auto (cuda if available), cpu, cuda, cuda:N "
                                                          f"(default: {default})")


def add_threads_flag(parser, default=None, per="process"):
    parser.add_argument("--threads", type=int, default=default,
                        help=f"torch CPU threads per {per} (default: {default or 'torch' + chr(39) + 's choice'})")


def add_precision_flag(parser, default="auto", several=False):
    if several:  # benchmarks.speed times each scheme in each precision given
        parser.add_argument("--precision", default=default, help="comma list of fp32, bf16 (default: fp32): each "
                            "scheme in each, bf16 as rows <scheme>-bf16 (autocast) where the device has native bf16; "
                            "the peers stay fp32")
        return
    parser.add_argument("--precision", default=default, choices=PRECISIONS,
                        help="bf16: forward passes under bf16 autocast (loss, softmax and metrics stay fp32); needs "
                             "native bf16 (GPU, or a CPU with avx512_bf16/AMX), else fp32 with a warning. Results go "
                             "to <preset>-bf16 (-bf16-cpu on a CPU). tf32: TF32 matmuls on CUDA, results in "
                             f"<preset>-tf32. auto: bf16 on a GPU with bf16, fp32 on CPUs (default: {default})")


def add_data_flags(parser, download=True):
    parser.add_argument("--data-dir", help=f"dataset root (default: ${ENV_DATA_DIR}, else ~/.cache/rnnreg)")
    parser.add_argument("--custom-data", action="store_true",
                        help="data files that fail the canonical checksums (your own copy); the results say so")
    if download:
        parser.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")


def add_config_flags(parser, scope="the preset"):
    """--epochs, --set and --p: what a table's runs change of `scope` (each gives the table a label of its own,
    except --p, which its rows name)."""
    parser.add_argument("--epochs", type=int, help=f"override the epoch count of {scope} (results go to <preset>-e<N>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override any key of {scope}, e.g. --set src=de (repeatable; results go to "
                             "<preset>-KEY=VALUE)")
    parser.add_argument("--p", metavar="SCHEME=P,...",
                        help="fix each scheme's p by hand, e.g. zaremba=0.3,mine=0.1 (zoneout: P/PC for "
                             "hiddens/cells) instead of the preset's or one chosen on validation; the tables say so")


def add_cuda_graphs_flag(parser):
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each training and evaluation step from a CUDA graph (core.graphs): no launch "
                             "overhead; for tasks with static shapes (lm), one process on CUDA")


def resolve_device(name, parser):
    """The torch device --device names, a parser error if there is none such here."""
    try:
        return pick_device(name)
    except ValueError as err:
        parser.error(str(err))


def resolve_precision_flag(precision, device, parser):
    """The precision a run on `device` really uses (core.precision.resolve_precision), a parser error for a bad
    name: the one place --precision is resolved, so a table's label and its runs agree."""
    try:
        return resolve_precision(precision, device)
    except ValueError as err:
        parser.error(str(err))


def resolve_jobs_device(name, precision, parser, local=True):
    """(device, precision) of jobs: here for jobs that run on this machine; for a cluster's jobs, from the names
    alone (a login node has no GPU): --device must name cpu or cuda, and auto precision is bf16 on cuda (every GPU
    since Ampere has it; the runner on the node falls back to fp32 with a warning where it does not) and fp32 on
    a CPU."""
    if local:
        device = resolve_device(name, parser)
        return device, resolve_precision_flag(precision, device, parser)
    if name == "auto" or name.split(":")[0] not in ("cpu", "cuda"):
        parser.error(f"--device {name}: a cluster's jobs need their device named (cpu or cuda), as this machine "
                     "may have none of theirs")
    device = torch.device(name)
    if precision not in PRECISIONS:
        parser.error(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "tf32" and device.type != "cuda":
        precision = "fp32"
    return device, precision


def passed_on(args):
    """The shared flags a command gives each of its jobs' runner, as the user gave them (the device by its name:
    each job resolves it where it runs)."""
    argv = []
    for folder in getattr(args, "user_dir", None) or []:
        argv += ["--user-dir", folder]
    for name in ("device", "threads", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    for name in ("custom_data", "no_download", "cuda_graphs"):
        if getattr(args, name, False):
            argv.append("--" + name.replace("_", "-"))
    return argv


def device_with_threads(args, parser):
    """The torch device of --device (a parser error if there is none such), after setting --threads."""
    device = resolve_device(args.device, parser)
    prepare_process(args.threads)
    return device


def prepare_process(threads=None):
    """A command's process-wide settings, before its first tensor: torch's thread count (when given), and malloc
    keeping freed memory for the next step (core.allocator; every implementation timed in the process shares it)."""
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    import_torch_compiler()


def import_torch_compiler():
    """torch imports its compiler (torch._dynamo) at a process's first optimizer, and that import writes generated
    modules into a temporary folder of its own: imported here, a write refused there (a full /tmp, a file-size
    limit) is one error naming the folder and the fix, before any run, instead of an OSError naming no file."""
    try:
        importlib.import_module("torch._dynamo")
    except OSError as err:
        sys.exit(f"error: torch could not write its own temporary files in {tempfile.gettempdir()} (the modules "
                 f"torch._dynamo generates when it is imported): {cause_in_words(err)}. Point TMPDIR at a folder "
                 f"with room (TMPDIR=<folder> python -m ...), or lift the limit, then run the command again")


def load_task_registry(args, parser):
    try:
        load_tasks(args.user_dir)
    except (ValueError, ImportError) as err:
        parser.error(f"--user-dir: {err}")


def list_tasks():
    from core import SCHEMES

    for name, reason in sorted(UNAVAILABLE.items()):
        print(f"{name}: unavailable here: it {reason}")
    for name, cls in sorted(TASKS.items()):
        print(f"{name}: {cls.description}")
        for preset, config in cls.presets.items():
            default = " (default)" if preset == cls.default_preset else ""
            note = f"  [{cls.preset_notes[preset]}]" if preset in cls.preset_notes else ""
            print(f"  {preset}{default}: " + ", ".join(f"{k}={v}" for k, v in config.items()) + note)
    print("dropout schemes (--variants): " + ", ".join(
        name + ("" if cls.__module__.startswith("core.") else f" (from {defined_in(cls)})")
        for name, cls in SCHEMES.items()))


# ---- never lose a run: what a run dir holds, and moving one aside ------------------------------------------------

RUN_FILES = ("result.json", "checkpoint.pt", "best.pt", "log.jsonl")


def run_dir_state(run_dir):
    """What `run_dir` holds of an earlier run ("a finished run", "progress (checkpoint.pt, ...)"), or None."""
    if (Path(run_dir) / "result.json").exists():
        return "a finished run (result.json)"
    held = [name for name in RUN_FILES if (Path(run_dir) / name).exists()]
    return f"progress ({', '.join(held)})" if held else None


def runs_in_the_way(run_dirs, resume, overwrite):
    """The run dirs that `--overwrite` moves aside; a ValueError naming them and the two ways on when they hold
    an earlier run and neither --resume nor --overwrite was given."""
    taken = [(d, state) for d in run_dirs if (state := run_dir_state(d))]
    if resume or not taken:
        return []
    if overwrite:
        return [d for d, _ in taken]
    listed = "; ".join(f"{d} holds {state}" for d, state in taken)
    raise ValueError(f"{listed}. Pass --resume to continue it (a finished run is reused, not retrained) or "
                     f"--overwrite to start again (the old run dir is moved aside to <dir>.old-<time>, not deleted)")


def move_aside(run_dir):
    """Rename `run_dir` to <name>.old-<UTC time>[-N]; returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 1
    while target.exists():
        target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}"), n + 1
    run_dir.rename(target)
    return target


def unwritable_folder(folder):
    """A message when `folder` could not be created or written (checked before training, creating nothing)."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return (f"cannot write to {folder}: {existing} is a file, not a folder; move it away or pick another "
                "--out / --run-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "the file system is read-only" if _read_only(existing) else "no write permission"
        return f"cannot write to {folder}: {why} at {existing}; pick another --out / --run-dir"
    try:  # the mode can say yes where the file system says no (/proc, some network mounts): ask it
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"cannot write to {folder}: a test file in {existing} was refused ({err.strerror}); pick another " \
               "--out / --run-dir"
    return None


def _read_only(folder):
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def check_folders(args, planned):
    """Every folder the runs will write (the task's results folder, each run dir), checked before training."""
    for folder in [Path(args.out) / args.task] + [d for dirs in planned.values() for d in dirs]:
        if problem := unwritable_folder(folder):
            sys.exit(f"error: {problem}")


def lock_runs(planned):
    """Hold each run dir's lock until this process ends: a second launch of the same runs stops at once, naming
    this one (a lock of a killed process is released by the kernel, so it is never stale)."""
    try:
        return [lock_run_dir(d) for dirs in planned.values() for d in dirs]
    except Locked as err:
        sys.exit(f"error: {err}")
