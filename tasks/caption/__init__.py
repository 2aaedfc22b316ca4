"""CNN -> LSTM image captioning (paper section 4.4): `python -m tasks.caption.describe` captions your images."""
from tasks.caption.task import CaptionTask  # noqa: F401  (registers the task)
