"""The task registry: @register, the import of the built-in task packages and of user folders, and loading
checkpoints of any registered task (fairseq-style extension by registration: a new task needs no edit elsewhere)."""
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import pickle
import pkgutil
import sys
import traceback
from pathlib import Path

import torch

from core.provenance import USER_NAMESPACE
from core.utils import defined_in, did_you_mean

ENV_USER_DIR = "RNNREG_USER_DIR"

TASKS = {}  # name -> Task subclass
UNAVAILABLE = {}  # built-in task package -> why it cannot be imported here (a missing optional dependency)
_IMPORTED_DIRS = set()
USER_FILES = {}  # a user-dir file -> {"tasks": [...], "schemes": [...]} it registered


def register(cls):
    """Class decorator: make a Task subclass runnable as `benchmarks.run --task NAME`."""
    if TASKS.get(cls.name, cls) is not cls:
        first, second = defined_in(TASKS[cls.name]), defined_in(cls)
        raise ValueError(f"task {cls.name!r} is registered twice ({first} and {second}): rename one of them")
    TASKS[cls.name] = cls
    return cls


def load_tasks(user_dirs=None):
    """Register the adapters of each user folder (`user_dirs`, else $RNNREG_USER_DIR, os.pathsep-separated),
    then every built-in task package under tasks/. A built-in task whose optional dependency is missing is
    recorded in UNAVAILABLE with the reason instead of breaking the others. Returns TASKS."""
    if user_dirs is None:
        user_dirs = [d for d in os.environ.get(ENV_USER_DIR, "").split(os.pathsep) if d]
    for folder in user_dirs:
        import_user_dir(folder)
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.ispkg and module.name not in UNAVAILABLE:
            try:
                importlib.import_module(f"tasks.{module.name}")
            except ImportError as err:
                if (err.name or "").split(".")[0] in ("tasks", "core", "benchmarks"):
                    raise  # our own code is broken: say so, do not hide it as "unavailable"
                UNAVAILABLE[module.name] = f"needs the Python package {err.name!r} ({err}); pip install it"
    return TASKS


def import_user_dir(folder):
    """Import a user's adapters under a private package namespace (rnnreg_user_<hash of the folder>), so that no
    file name can shadow, or be shadowed by, the standard library or an installed package (a `copy.py` is
    `rnnreg_user_<hash>.copy`, not Python's copy). A package folder (with __init__.py) is imported as that package;
    otherwise every *.py in it is imported, in name order (siblings import each other relatively:
    `from .helpers import x`). USER_FILES records what each file registered."""
    path = Path(folder).expanduser().resolve()
    if path in _IMPORTED_DIRS:
        return
    if not path.is_dir():
        raise ValueError(f"user dir {folder} is not a folder: give --user-dir (or ${ENV_USER_DIR}) a folder of "
                         "task adapters")
    _IMPORTED_DIRS.add(path)
    namespace = USER_NAMESPACE + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    init = path / "__init__.py"
    package = _import_file(namespace, init if init.exists() else None, path)
    if init.exists():
        return package
    for file in sorted(path.glob("*.py")):
        _import_file(f"{namespace}.{file.stem}", file, path)
    return package


def _import_file(name, file, folder):
    """Import `file` as module `name` (a namespace package for `folder` when `file` is None) and record in
    USER_FILES the tasks and schemes it registered."""
    from core.schemes import SCHEMES

    if file is None:  # a folder of plain files: an empty package whose submodules are those files
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        return module
    package = {"submodule_search_locations": [str(folder)]} if file.name == "__init__.py" else {}
    spec = importlib.util.spec_from_file_location(name, file, **package)
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    tasks_before, schemes_before = set(TASKS), set(SCHEMES)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ValueError(f"{_where(err, file)}: {type(err).__name__}: {err}: fix that file (or leave its folder "
                         "out of --user-dir)") from err
    except BaseException:
        del sys.modules[name]
        raise
    USER_FILES[str(file)] = {"tasks": sorted(set(TASKS) - tasks_before), "schemes": sorted(set(SCHEMES) - schemes_before)}
    return module


def _where(err, file):
    """file:line of a user file's failure: the syntax error's line, else the deepest frame in a user-dir file."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{err.filename}:{err.lineno}"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).parent == Path(file).parent]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else str(file)


def user_registered():
    """The names of the tasks and schemes registered by --user-dir files."""
    return {name for got in USER_FILES.values() for name in got["tasks"] + got["schemes"]}


def _user_files_text():
    if not USER_FILES:
        return ""
    return " User-dir files imported: " + "; ".join(
        f"{file} registered " + (", ".join([f"task {t}" for t in got["tasks"]] + [f"scheme {s}" for s in got["schemes"]])
                                 or "nothing (no @register'ed Task subclass)")
        for file, got in USER_FILES.items()) + "."


def get_task(name, user_dirs=None):
    load_tasks(user_dirs)
    if name in TASKS:
        return TASKS[name]
    if name in UNAVAILABLE:
        raise ValueError(f"task {name!r} is unavailable here: it {UNAVAILABLE[name]}")
    raise ValueError(f"unknown task {name!r}{did_you_mean([name], [*TASKS, *UNAVAILABLE])}; available: {', '.join(sorted(TASKS))}"
                     + (f" (unavailable here: {', '.join(sorted(UNAVAILABLE))})" if UNAVAILABLE else "")
                     + f". A task of your own: --user-dir FOLDER (or ${ENV_USER_DIR}) with its @register'ed adapter."
                     + _user_files_text())


def load_checkpoint(path, device="cpu", task=None):
    """A best.pt of any task -> (task, model in eval mode). The task object holds what decoding needs
    (config, vocabularies, feature statistics) but no data. `task`: the task name the caller expects."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or not {"model", "task", "config"} <= set(ckpt):
        raise ValueError(f"{path} is not a checkpoint of this suite (use a best.pt written by benchmarks.run)")
    if task is not None and ckpt["task"] != task:
        raise ValueError(f"{path} is a {ckpt['task']} checkpoint, not {task} (use a best.pt written by --task {task})")
    owner = get_task(ckpt["task"])(ckpt["config"])
    # checkpoints written before the data_state key kept the same entries at the top level
    state = ckpt.get("data_state") or {k: v for k, v in ckpt.items() if k not in ("model", "epoch", "task", "config")}
    owner.load_data_state(state)
    model = owner.build_model().to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return owner, model


def load_members(paths, device, task, same_config=()):
    """(the first member's task object, [models]) of one or several checkpoints of `task`; the members must share
    their data state (vocabularies) and the config keys `same_config` (e.g. the image encoder)."""
    loaded = [load_checkpoint(path, device, task=task) for path in paths]
    first = loaded[0][0]
    for path, (other, _) in zip(paths[1:], loaded[1:]):
        if other.data_state() != first.data_state() or any(other.config[k] != first.config[k] for k in same_config):
            raise ValueError(f"ensemble members must share their vocabularies{' and ' + ', '.join(same_config) if same_config else ''} "
                             f"(train them on one preset): {path} differs from {paths[0]}")
    return first, [model for _, model in loaded]
