"""Task registry: `@register` (from tasks.base) a Task subclass and `benchmarks.run --task NAME` can run it.
Importing this package registers the built-in tasks."""
from tasks import caption, lm, mt, speech  # noqa: F401  (registers the built-in tasks)
from tasks.base import TASKS, get_task, register  # noqa: F401
