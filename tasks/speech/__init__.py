"""Frame-level acoustic modeling (paper section 4.2)."""
from tasks.speech.task import SpeechTask  # noqa: F401  (registers the task)
