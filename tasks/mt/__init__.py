"""Seq2seq translation with beam search (paper section 4.3): `python -m tasks.mt.translate` translates text."""
from tasks.mt.task import TranslationTask  # noqa: F401  (registers the task)
