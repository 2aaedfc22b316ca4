"""The task-adapter interface. A task is one file: data, model, loss/metrics and presets."""
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from core.cache import cache_root

IGNORE = -100  # target id that counts for nothing (padding, deleted labels)
UNSEEN = -101  # a held-out label never seen in training: no loss, but always a wrong prediction


TASKS = {}  # name -> Task subclass; tasks/__init__.py imports the built-in adapters, which register here


def register(cls):
    """Class decorator: make a Task subclass runnable as `benchmarks.run --task NAME`."""
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    TASKS[cls.name] = cls
    return cls


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def first_seed_details(runs, key):
    """{(variant, p): details} of the first single-model run (not an ensemble) of each variant whose details
    have `key`: what example tables and task figures show."""
    firsts = {}
    for run in runs:
        if run.get("details", {}).get(key) and not run.get("ensemble"):
            firsts.setdefault((run["variant"], run["dropout"]), run["details"])
    return firsts


class Task:
    name = ""  # registry key, e.g. "lm"
    description = ""
    presets = {}  # preset name -> plain config dict (model, data and TrainConfig keys)
    default_preset = "cpu"  # what `benchmarks.run --task NAME` trains when no --preset is given
    preset_notes = {}  # preset -> a warning printed above its results table (e.g. "scaled down")
    paper_results = {}  # preset -> variant -> {metric: value} as printed in the paper
    paper_source = ""  # where paper_results come from, e.g. "Table 1"
    main_metric = "ppl"  # selects the best epoch on valid and names the table columns
    lower_is_better = True
    results_notes = ""  # printed under the results table: how a metric is computed
    extra_test_metrics = ()  # (key, label) of test metrics shown beside the main one, e.g. ("bleu", "BLEU")
    split_metrics = ()  # metrics besides the main one shown for train, valid and test, e.g. ("ce",)
    stateful = False  # carry the recurrent state across consecutive batches (truncated BPTT)
    # Measure the train split again in eval mode (no dropout) after every epoch and report that as train_*,
    # as the paper does for frame accuracy; otherwise train_* is the running average of the training pass.
    eval_train = False

    def __init__(self, config, data_dir, download=True, custom_data=False, cache_dir=None):
        """`custom_data`: the user means to use data that fails the canonical checksums; the task then lists
        those files in `self.noncanonical` (the runner records it in the results) instead of stopping.
        `cache_dir`: where derived data (features) is cached; None means core.cache's default."""
        self.config, self.data_dir, self.download = dict(config), Path(data_dir), download
        self.custom_data = custom_data
        self.cache_dir = cache_root(cache_dir)
        self.noncanonical = []

    @classmethod
    def default_seeds(cls, config):
        """The seeds a run of `config` trains when --seeds is not given (None: seed 1, or 1..N with an ensemble)."""
        return None

    @classmethod
    def check_config(cls, config, ensemble=None):
        """Called by the runner before any data is loaded: raise ValueError (or DataError) naming a bad setting.
        `ensemble`: the number of members whose ensemble will be evaluated, if any."""

    def data_info(self):
        """What the results record about the data the run used."""
        return {"canonical": not self.noncanonical, "noncanonical_files": list(self.noncanonical)}

    def build_model(self):
        raise NotImplementedError

    def batches(self, split, device):
        """Yield the batches of `split` ("train", "valid", "test") already on `device`. A shuffled order must
        come from torch's global RNG (seeded and checkpointed by the trainer) so runs repeat and resume."""
        raise NotImplementedError

    def num_batches(self, split):
        raise NotImplementedError

    def forward(self, model, batch, state):
        """Return a core.StepOutput for one batch."""
        raise NotImplementedError

    def logits(self, model, batch, state):
        """(logits (..., classes), targets (...) with IGNORE where nothing is scored, state) for one batch:
        what an ensemble averages. Tasks that support `--ensemble` implement it."""
        raise NotImplementedError(f"task {self.name} does not support ensembles (it has no Task.logits)")

    @torch.no_grad()
    def ensemble_metrics(self, models, split, device):
        """The metrics of an ensemble on `split`: every member's next-token (or frame) probabilities are averaged
        at every position, as in the paper's model averaging; statistics as in `metrics`."""
        for model in models:
            model.eval()
        nll, count, correct, scored_count, states = 0.0, 0, 0, 0, [None] * len(models)
        for batch in self.batches(split, device):
            outs = [self.logits(model, batch, state) for model, state in zip(models, states)]
            if self.stateful:
                states = [out[2] for out in outs]
            logp = torch.stack([F.log_softmax(out[0].float(), dim=-1) for out in outs]).logsumexp(0)
            logp = logp - math.log(len(models))
            targets = outs[0][1]
            real, scored = targets != IGNORE, targets >= 0
            nll += float(F.nll_loss(logp[scored], targets[scored], reduction="sum"))
            count += int(real.sum())
            scored_count += int(scored.sum())
            correct += int((logp.argmax(-1)[real] == targets[real]).sum())
        return self.metrics({"nll": nll, "count": count, "correct": correct, "scored": scored_count})

    @torch.no_grad()
    def item_stats(self, model, split, device):
        """Per-item statistics of `split` for paired tests between variants: {"nll": [[nll, count], ...]} and,
        for tasks with `correct` in their metrics, {"acc": [[correct, count], ...]}. An item is one row of an
        evaluation batch (a sentence, a caption, an utterance; a bptt chunk of the LM's stream); evaluation
        batches come in a fixed order, so item i is the same data in every run of a config."""
        if type(self).logits is Task.logits:
            return {}
        model.eval()
        nll_items, acc_items, state = [], [], None
        for batch in self.batches(split, device):
            logits, targets, state = self.logits(model, batch, state)
            state = state if self.stateful else None
            targets = targets.reshape(-1, targets.size(-1))  # (rows, positions)
            logits = logits.float().reshape(*targets.shape, logits.size(-1))
            real, scored = targets != IGNORE, targets >= 0  # UNSEEN: counted (always wrong), no loss
            nll = F.cross_entropy(logits.transpose(1, 2), targets.masked_fill(~scored, 0), reduction="none") * scored
            correct = (logits.argmax(-1) == targets) & real
            for row_nll, row_count, row_correct in zip(nll.sum(1).tolist(), real.sum(1).tolist(),
                                                         correct.sum(1).tolist()):
                if row_count:
                    nll_items.append([round(row_nll, 4), row_count])
                    acc_items.append([row_correct, row_count])
        out = {"nll": nll_items}
        if self.main_metric == "acc":
            out["acc"] = acc_items
        return out

    def metrics(self, totals):
        """Turn summed statistics ({"nll", "count", ...extra}) into named metrics. The default is perplexity
        per counted target (token) and the mean loss; tasks with other metrics override it."""
        mean = totals["nll"] / totals["count"]
        return {"ppl": float(torch.tensor(mean).exp()), "loss": mean}

    def final_metrics(self, model, split, device):
        """Test-time metrics that need more than the loss (e.g. BLEU after beam search). `model` may be a list:
        an ensemble (`--ensemble N`), whose members' probabilities are averaged.

        Returns (metrics, details): metrics are numbers (reported as test_<name>); details is JSON for the
        results (e.g. the BLEU signature, example outputs). A details entry "outputs" (a list of lines) is
        written to the run directory as <split>_outputs.txt instead of into the results."""
        return {}, {}

    @classmethod
    def figures(cls, runs, folder, label):
        """Draw task-specific pictures from the recorded runs (their details) into `folder`, beside the
        table and the learning curves that every task gets; returns the paths written."""
        return []

    def checkpoint_extras(self):
        """What besides the weights a checkpoint needs to be used on its own (vocab, model config)."""
        return {"task": self.name, "config": self.config}
