"""The task-adapter interface. A task is one file: data, model, loss/metrics and presets."""
from pathlib import Path


class Task:
    name = ""  # registry key, e.g. "lm"
    description = ""
    presets = {}  # preset name -> plain config dict (model, data and TrainConfig keys)
    preset_notes = {}  # preset -> a warning printed above its results table (e.g. "scaled down")
    paper_results = {}  # preset -> variant -> {metric: value} as printed in the paper
    main_metric = "ppl"  # selects the best epoch on valid and names the table columns
    lower_is_better = True
    stateful = False  # carry the recurrent state across consecutive batches (truncated BPTT)

    def __init__(self, config, data_dir, download=True):
        self.config, self.data_dir, self.download = dict(config), Path(data_dir), download

    def build_model(self):
        raise NotImplementedError

    def batches(self, split, device):
        """Yield the batches of `split` ("train", "valid", "test") already on `device`."""
        raise NotImplementedError

    def num_batches(self, split):
        raise NotImplementedError

    def forward(self, model, batch, state):
        """Return a core.StepOutput for one batch."""
        raise NotImplementedError

    def metrics(self, totals):
        """Turn summed statistics ({"nll", "count", ...extra}) into named metrics."""
        raise NotImplementedError

    def final_metrics(self, model, split, device):
        """Extra test-time metrics that need more than the loss (e.g. BLEU after beam search)."""
        return {}

    def checkpoint_extras(self):
        """What besides the weights a checkpoint needs to be used on its own (vocab, model config)."""
        return {"task": self.name, "config": self.config}
