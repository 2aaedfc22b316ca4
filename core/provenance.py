"""Where a number came from: the command, the code version, the software and the machine.

The code version is a git commit only when the project root is the top level of its git repository (an
exported tree that sits inside another repository must not record that repository's HEAD) and that repository
tracks the source (an unpacked release in which a user ran `git init` tracks none of it: its HEAD says nothing
about the code); it is marked "-dirty" when a tracked file that can change a result differs from HEAD or a
source file is untracked. Otherwise it is "not a git checkout" (or what $RNNREG_GIT_COMMIT says the export
came from), and the source hash alone names the code. Every run also records `source_hash`, a content hash
of the source tree that anyone can recompute, in the project root, with

    (find core tasks benchmarks -type f ! -path '*/__pycache__/*' ! -name '*.pyc'; echo pyproject.toml) \\
        | LC_ALL=C sort | xargs sha256sum | sha256sum

or `python -c "import core.provenance as p; print(p.source_hash(), p.git_commit())"` (the same hash, and the
commit a run would record).
"""
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from core.allocator import allocator_setting
from core.precision import cpu_bf16_flags, flags_say_native_bf16, fp32_math, read_cpuinfo

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("core", "tasks", "benchmarks")
SOURCE_FILES = ("pyproject.toml",)
ENV_GIT_COMMIT = "RNNREG_GIT_COMMIT"  # an export without .git may say which commit it came from
NOT_A_CHECKOUT = "not a git checkout"
DECLARED = f" (declared by ${ENV_GIT_COMMIT})"
# Changes that cannot alter a number: the tables the runner itself rewrites, and the docs.
NOT_CODE = (":(exclude)results", ":(exclude)*.md")
USER_NAMESPACE = "rnnreg_user_"  # the package prefix tasks.registry imports --user-dir files under


def source_files(root=ROOT):
    """The files whose contents make `source_hash`: relative POSIX paths, in C-locale (byte) order."""
    root = Path(root)
    paths = [p.relative_to(root).as_posix() for d in SOURCE_DIRS if (root / d).is_dir()
             for p in (root / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    paths += [name for name in SOURCE_FILES if (root / name).is_file()]
    return sorted(paths, key=lambda p: p.encode())


def source_hash(root=ROOT):
    """sha256 of the `sha256sum` listing of source_files (the documented shell command's value)."""
    listing = "".join(f"{hashlib.sha256((Path(root) / p).read_bytes()).hexdigest()}  {p}\n" for p in source_files(root))
    return hashlib.sha256(listing.encode()).hexdigest()


def _git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def git_commit(root=ROOT):
    """HEAD (with "-dirty", see the module docstring), or $RNNREG_GIT_COMMIT / "not a git checkout"."""
    root = Path(root).resolve()
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip()).resolve()
        if top != root:
            raise LookupError
        commit = _git(root, "rev-parse", "HEAD").strip()
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE).strip()
        tracked = set(_git(root, "ls-files", "--", *SOURCE_DIRS, *SOURCE_FILES).splitlines())
        if not any(path.startswith(SOURCE_DIRS) for path in tracked):
            raise LookupError  # the user's own repository around an unpacked release: HEAD is not our code
        untracked = [p for p in source_files(root) if p not in tracked]
    except (OSError, subprocess.CalledProcessError, LookupError):
        declared = os.environ.get(ENV_GIT_COMMIT)
        return declared + DECLARED if declared else NOT_A_CHECKOUT
    return commit + ("-dirty" if dirty or untracked else "")


def cpu_model():
    for line in (read_cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device):
    device = torch.device(device)
    desc = {"device": str(device), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512: one CPU name, two speeds
            # native bf16 or not (/proc/cpuinfo; None where there is none: cpu_capability is all there is)
            "cpu_bf16": cpu_bf16_flags(),
            "fp32_math": fp32_math(device),  # IEEE or TF32 (bf16 on some CPUs): set by --precision, global
            "malloc": allocator_setting()}  # glibc keeping freed memory (core.allocator) changes CPU speed
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def provenance(device, command=None):
    """Where a number came from: the command, the code (the user's own too), the software and the machine."""
    prov = {
        "command": command or shlex.join([sys.executable] + sys.argv),
        "git_commit": git_commit(),
        "source_hash": source_hash(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **hardware(device),
    }
    files = user_code()
    if files:
        prov["user_code"] = {"hash": user_code_hash(files), "files": files}
    return prov


def user_code():
    """{module: sha256 of its file} of every module imported from a --user-dir or $RNNREG_USER_DIR (under
    USER_NAMESPACE, tasks.registry), named without the namespace so that the same files hash the same anywhere;
    {} where none was imported. The repository's commit says nothing about these files."""
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.startswith(USER_NAMESPACE) and path:
            local = name.partition(".")[2] or "__init__"
            files[local] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return dict(sorted(files.items()))


def user_code_hash(files):
    """One sha256 over user_code()'s listing."""
    return hashlib.sha256("".join(f"{digest}  {name}\n" for name, digest in files.items()).encode()).hexdigest()


def recorded_user_code(prov):
    """The user-code hash a run recorded, or None."""
    return (prov.get("user_code") or {}).get("hash")


def code_version(prov):
    """How a table names the code of a run: its commit (12 digits, "-dirty" kept), or the source hash when it
    ran outside a git checkout."""
    commit = prov.get("git_commit", "unknown")
    if commit == NOT_A_CHECKOUT or commit == "unknown":
        digest = prov.get("source_hash")
        return f"{commit}, source sha256 {digest[:12]}" if digest else commit
    user = f", user code {recorded_user_code(prov)[:12]}" if recorded_user_code(prov) else ""
    if commit.endswith(DECLARED):
        return f"commit {commit}{user}"
    return "commit " + commit[:12] + ("-dirty" if commit.endswith("-dirty") else "") + user


def fp32_math_text(prov):
    """How a table names the fp32 math of a GPU run (", fp32 matmul ieee, cuDNN ieee"); nothing for CPUs and for
    runs recorded before provenance had it."""
    math = prov.get("fp32_math") or {}
    return f", fp32 matmul {math['matmul']}, cuDNN {math['cudnn']}" if "cudnn" in math else ""


def malloc_text(prov):
    """How a table names the malloc setting of a run: ", malloc: glibc, freed memory kept (...)"; runs recorded
    before core.allocator existed ran with the system's default."""
    return f", malloc: {prov.get('malloc', 'default (before core.allocator)')}"


def cpu_text(prov):
    """How a table names a run's CPU: "AMD EPYC, AVX512, native bf16 (avx512_bf16)", or "..., no native bf16";
    only what the provenance recorded (older runs lack the capability and the bf16 flags)."""
    flags = prov.get("cpu_bf16")
    bf16 = None if flags is None else (f"native bf16 ({', '.join(flags)})" if flags_say_native_bf16(flags)
                                       else "no native bf16")
    return ", ".join(filter(None, (prov.get("cpu_model"), prov.get("cpu_capability"), bf16)))


def machine_key(prov):
    """What makes two runs' machines the same for a comparison: the GPU's name or the CPU's model, and torch's
    major.minor version (("NVIDIA H200", "2.11"), ("AMD EPYC", "2.9"))."""
    torch_version = ".".join(str(prov.get("torch", "?")).split("+")[0].split(".")[:2])
    return prov.get("gpu") or prov.get("cpu_model") or str(prov.get("device", "?")), torch_version


def machine_name(prov):
    """'NVIDIA H200, torch 2.11': machine_key as a table prints it."""
    device, torch_version = machine_key(prov)
    return f"{device}, torch {torch_version}"
