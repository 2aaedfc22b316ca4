"""Task registry: `@register` a Task subclass and `benchmarks.run --task NAME` can run it."""
TASKS = {}


def register(cls):
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    TASKS[cls.name] = cls
    return cls


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


from tasks import caption, lm, mt, speech  # noqa: E402,F401  (registers the built-in tasks)
