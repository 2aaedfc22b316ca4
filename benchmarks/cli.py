"""Command-line pieces shared by the benchmark commands (run, speed, mc)."""
import torch

from core.utils import pick_device
from tasks.base import ENV_USER_DIR, load_tasks


def add_user_dir_flag(parser):
    parser.add_argument("--user-dir", action="append", metavar="DIR",
                        help=f"a folder of your own task adapters (@register'ed Task subclasses), imported before the "
                             f"built-in tasks (repeatable; default: ${ENV_USER_DIR}, os.pathsep-separated)")


def device_with_threads(args, parser):
    """The torch device of --device (a parser error if there is none such), after setting --threads."""
    try:
        device = pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def load_task_registry(args, parser):
    try:
        load_tasks(args.user_dir)
    except (ValueError, ImportError) as err:
        parser.error(f"--user-dir: {err}")
