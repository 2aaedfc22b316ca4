"""PTB word-level language modeling (paper section 4.1): `python -m tasks.lm.sample` samples from a checkpoint."""
from tasks.lm.task import LanguageModelTask  # noqa: F401  (registers the task)
