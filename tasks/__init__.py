"""The tasks: one package per task under tasks/ (lm, mt, speech, caption), each with its adapter, data loading
and tools. `load_tasks()` imports every package here (and a user's folder of adapters, --user-dir), whose
@register'ed Task subclasses `benchmarks.run --task NAME` can then run."""
from tasks.base import TASKS, UNAVAILABLE, Task, get_task, load_checkpoint, load_tasks, register  # noqa: F401
