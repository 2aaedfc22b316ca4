"""The task-adapter interface.

A task is one package under tasks/ (or a module in a folder given with --user-dir) whose adapter class is
decorated with @register (tasks/registry.py, re-exported here): its data, model, loss/metrics, presets and its
own tools live in that package.
"""
import importlib.util
import math
import shutil
import time
import warnings
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from core.cache import cache_root
from core.scoring import IGNORE, UNSEEN, add_items, new_items, new_totals, pass_groups, tally  # noqa: F401
from core.download import data_root
from core.step import TrainConfig
from core.utils import did_you_mean, rng_states_on_cpu, save_torch
from tasks.registry import (  # noqa: F401 (the registry's names, re-exported)
    ENV_USER_DIR, TASKS, UNAVAILABLE, get_task, import_user_dir, load_checkpoint, load_members, load_tasks, register,
    user_registered)


def first_seed_details(runs, key):
    """{(variant, p): details} of the first single-model run (not an ensemble) of each variant whose details
    have `key`: what example tables and task figures show."""
    firsts = {}
    for run in runs:
        if run.get("details", {}).get(key) and not run.get("ensemble"):
            firsts.setdefault((run["variant"], run["dropout"]), run["details"])
    return firsts


# keys every task's config has or may have: the trainer's, the variant's and the runner's
# scheme_dropout: {scheme: p} chosen on validation for the schemes whose p is not the preset's `dropout`
# (zoneout: p or [p for h, p for c]); zoneout_cell: zoneout's rate for the cells when it is not p
COMMON_KEYS = frozenset({f.name for f in fields(TrainConfig)} | {"scheme", "dropout", "scheme_dropout", "seed",
                                                                  "ensemble", "zoneout_cell", "cuda_graphs"})


# (key, bound, strict): a value of a config key must be above (strict) or at least its bound
_RANGES = [(k, 1, False) for k in ("epochs", "batch_size", "eval_batch_size", "decode_batch_size", "hidden", "emb",
                                    "layers", "beam", "bptt", "max_tokens", "max_vocab")] + [
    ("lr", 0, True), ("lr_decay", 0, True), ("clip", 0, False), ("init", 0, False), ("max_len_a", 0, False),
    ("max_len_b", 0, False), ("min_freq", 1, False)]


class Task:
    name = ""  # registry key, e.g. "lm"
    description = ""
    config_keys = ()  # the model, data and decoding keys the task reads (COMMON_KEYS are known to every task)
    presets = {}  # preset name -> plain config dict (model, data and TrainConfig keys)
    default_preset = "cpu"  # what `benchmarks.run --task NAME` trains when no --preset is given
    preset_notes = {}  # preset -> a warning printed above its results table (e.g. "scaled down")
    paper_results = {}  # preset -> variant -> {metric: value} as printed in the paper
    paper_source = ""  # where paper_results come from, e.g. "Table 1"
    published_anchors = {}  # preset -> lines: other papers' numbers for this configuration, printed under the table
    main_metric = "ppl"  # selects the best epoch on valid and names the table columns
    needs, needs_programs = (), ()  # (package or program, what for): checked before any data is read
    lower_is_better = True
    results_notes = ""  # printed under the results table: how a metric is computed
    extra_test_metrics = ()  # (key, label) of test metrics shown beside the main one, e.g. ("bleu", "BLEU")
    split_metrics = ()  # metrics besides the main one shown for train, valid and test, e.g. ("ce",)
    bounded_metrics = {}  # metric -> (low, high) it cannot leave, e.g. {"acc": (0, 100)}: seed intervals stop there
    stateful = False  # carry the recurrent state across consecutive batches (truncated BPTT)
    # forward has one shape per batch size and reads nothing back to the host (no .item(), int(tensor)), so
    # --cuda-graphs may capture its steps (core.graphs)
    graph_safe = False
    speed_notes = ""  # what benchmarks.speed's table should say about this task's rows (peers, worst cases)
    # where runs trained or decoded in bf16 are scored against fp32 (e.g. a table under results/), printed beside the
    # bf16 rows of benchmarks.speed's table; None: those sections say that quality in bf16 was not measured
    bf16_quality = None
    # Measure the train split again in eval mode (no dropout) after every epoch and report that as train_*,
    # as the paper does for frame accuracy; otherwise train_* is the running average of the training pass.
    eval_train = False

    def __init__(self, config, data_dir=None, download=True, custom_data=False, cache_dir=None):
        """Cheap: reads no data (`load_data` does), so a model can be built from a config and a checkpoint.
        `data_dir`: dataset root (None: $RNNREG_DATA_DIR, else ~/.cache/rnnreg). `custom_data`: the user means
        to use data that fails the canonical checksums; the task then lists those files in `self.noncanonical`
        (the runner records it in the results) instead of stopping. `cache_dir`: where derived data (features)
        is cached; None means core.cache's default."""
        self.check_keys(config)
        self.config, self.data_dir, self.download = dict(config), data_root(data_dir), download
        self.custom_data = custom_data
        self.cache_dir = cache_root(cache_dir)
        self.noncanonical = []

    @classmethod
    def check_keys(cls, config):
        """A key the task does not read is a typo: one error naming it (and the nearest known key)."""
        known = COMMON_KEYS | set(cls.config_keys)
        for key in config:
            if key not in known:
                raise ValueError(f"task {cls.name}: unknown config key {key!r}{did_you_mean([key], known)}"
                                 f"; its keys: {', '.join(sorted(known))}")

    def load_data(self):
        """Read (download, check, featurize) the corpus; afterwards build_model and batches work. Returns self."""
        raise NotImplementedError

    def synthetic_data(self, batches=20, seed=0):
        """Stand in random data of the preset's shape (vocabulary sizes, sequence lengths, feature sizes) so that
        build_model and batches("train"/"valid") give about `batches` batches without any corpus: what
        benchmarks.speed times. Tasks that want a speed row implement it."""
        raise NotImplementedError(f"task {self.name} has no synthetic_data(), so benchmarks.speed cannot time it")

    examples_per_epoch = 3  # validation items a decoding task decodes after each epoch for TensorBoard

    @torch.no_grad()
    def epoch_examples(self, model, device):
        """A few outputs on validation after each epoch, for TensorBoard's text tab: a decoding task (MT,
        captioning) decodes its first `examples_per_epoch` validation items; () for the others."""
        if not getattr(self, "decodes", False) or not self.examples_per_epoch:
            return ()
        was_training = model.training
        model.eval()
        try:
            items = list(range(min(self.examples_per_epoch, self.num_items("valid"))))
            outputs = self.decode_items(model, "valid", device, items)
        finally:
            model.train(was_training)
        return [f"valid item {i}: {' '.join(o) if isinstance(o, list) else o}" for i, o in zip(items, outputs)]

    def data_state(self):
        """What a checkpoint needs besides the weights and the config to rebuild the model and decode with it
        (vocabularies, feature statistics); JSON-like values or small tensors."""
        return {}

    def load_data_state(self, state):
        """Restore `data_state()` into a task built from a config alone (tasks.base.load_checkpoint)."""

    def speed_peers(self, device, dropout):
        """{name: (train_step(batch), eval_step(batch))} of published implementations to time beside ours on the
        same synthetic batches (the LM: pytorch/examples word_language_model), with dropout p `dropout`: the p the
        schemes are timed at (this task's own config may be the `none` row's, p=0)."""
        return {}

    def training_products(self):
        """The matrix products of one training step as [(m, k, n, times)] with the tokens (items) of that step:
        what benchmarks.speed times alone to give the step's bound (products at the machine's rate, nothing
        else). None: the task states none, and its table shows no bound."""
        return None

    def speed_jobs(self, model, device):
        """{column: (fn(), items)} of extra timed jobs on a synthetic-data model (MT: beam decoding), reported as
        items per second."""
        return {}

    @classmethod
    def train_items(cls, config):
        """An epoch's training items (tokens) where known without the data, else None: for plans' estimates."""
        return None

    @classmethod
    def default_seeds(cls, config):
        """The seeds a run of `config` trains when --seeds is not given (None: seed 1, or 1..N with an ensemble)."""
        return None

    @classmethod
    def selection_seed(cls, config):
        """The seed benchmarks.select trains its grid on by default (a task with folds may keep one for selection)."""
        return 1

    @classmethod
    def selection_only(cls, config):
        """A message when `config` (with its seed) may only train selection runs (--valid-only), else None."""
        return None

    @classmethod
    def check_config(cls, config, ensemble=None):
        """Called by the runner before any data is loaded: raise ValueError (or DataError) naming a bad setting.
        `ensemble`: the number of members whose ensemble will be evaluated, if any."""
        for module, why in cls.needs:  # fail in seconds, not when the first decode is scored after training
            if importlib.util.find_spec(module) is None:
                raise ValueError(f"task {cls.name} needs the Python package {module} ({why}): pip install {module}")
        for program, why in cls.needs_programs:
            if shutil.which(program) is None:
                raise ValueError(f"task {cls.name} needs the program {program} on PATH ({why}); install it first")
        cls.check_ranges(config)

    @classmethod
    def check_ranges(cls, config):
        """A ValueError naming the first key whose value is out of its range (rates in [0, 1), sizes >= 1, ...)."""
        for key in ("dropout", "embed_dropout", "zoneout_cell"):
            if config.get(key) is not None and not 0 <= config[key] < 1:
                raise ValueError(f"{key} must be in [0, 1), got {config[key]}")
        for key, low, strict in _RANGES:
            value = config.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    value <= low if strict else value < low):
                raise ValueError(f"{key} must be {'>' if strict else '>='} {low:g}, got {value!r}")

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
    def ensemble_metrics(self, models, split, device, items=False):
        """The metrics of an ensemble on `split`: every member's next-token (or frame) probabilities are averaged
        at every position, as in the paper's model averaging; statistics as in `metrics`. `items`: they also carry
        "items", the per-item statistics of item_stats."""
        for model in models:
            model.eval()
        log_probs = lambda batch, states: self.mean_log_probs(models, batch, states)  # noqa: E731
        return self._averaged_metrics(split, device, log_probs, items)

    @torch.no_grad()
    def mc_dropout_metrics(self, model, split, device, samples, progress=None, resume=None):
        """MC-dropout evaluation (Gal & Ghahramani 2016): `model` with its dropout on, the probabilities of `samples`
        passes averaged at every position, each pass with its own masks (and its own state on stateful tasks)."""
        return self.mc_dropout_curve(model, split, device, [samples], progress=progress, resume=resume)[samples]

    @torch.no_grad()
    def mc_dropout_curve(self, model, split, device, counts, group=10, items=False, progress=None, resume=None):
        """{k: MC-dropout metrics of the first k passes} for every k in `counts`, from one run of max(counts) passes,
        so the whole curve costs what its largest point costs. Passes run in groups of at most `group` (memory);
        each group keeps its own state on stateful tasks. `items`: the largest k's metrics also carry "items",
        its per-item statistics as item_stats gives them (for a paired test against the standard evaluation).
        `progress`: tqdm options (desc, position, ...) for a progress bar over the split's batches. `resume`: a file
        that keeps the evaluation so far (written atomically every `mc_save_every_s` seconds, removed at the end):
        a later call with the same file, model and arguments continues from it, to the uninterrupted result."""
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError("MC-dropout evaluation runs the model in training mode, which would update its "
                             "BatchNorm statistics; this model has BatchNorm layers")
        counts = sorted(set(counts))
        if counts[0] < 1:
            raise ValueError(f"MC-dropout needs at least 1 pass, got {counts[0]}")
        sizes = pass_groups(counts, group)
        key = {"split": split, "counts": counts, "group": group, "items": items, "device": str(device),
               "weights": float(sum(p.double().sum() for p in model.parameters()))}  # a retrained model differs
        saved = _load_mc_progress(resume, key, device)
        totals, states, rows, skip = saved["so_far"] if saved else (
            {k: new_totals() for k in counts}, [None] * len(sizes), new_items(), 0)
        saved_at = time.time()
        model.train()
        try:
            batches = self.batches(split, device)
            if progress is not None:
                batches = tqdm(batches, total=self.num_batches(split), unit="batch", **progress)
            for b, batch in enumerate(batches):
                if b < skip:
                    continue
                if b == skip and saved:
                    _set_rng_states(saved["rng"], device)  # the masks continue as if never interrupted
                summed, done = None, 0  # log of the summed probabilities of the passes so far
                for i, size in enumerate(sizes):
                    mean, targets, states[i] = self.mc_log_probs(model, batch, states[i], size)
                    part = mean + math.log(size)
                    summed = part if summed is None else torch.logaddexp(summed, part)
                    done += size
                    if done in totals:
                        tally(totals[done], summed - math.log(done), targets)
                if items:
                    add_items(rows, summed - math.log(done), targets)
                if resume is not None and time.time() - saved_at >= self.mc_save_every_s:
                    save_torch({"key": key, "so_far": (totals, states, rows, b + 1), "rng": _rng_states(device)},
                               resume)
                    saved_at = time.time()
        finally:
            model.eval()
        if resume is not None:
            Path(resume).unlink(missing_ok=True)
        curve = {k: self.metrics(t) for k, t in totals.items()}
        if items:
            curve[counts[-1]]["items"] = self._item_keys(rows)
        return curve

    mc_save_every_s = 60  # how often mc_dropout_curve(resume=...) saves its progress

    def mean_log_probs(self, models, batch, states):
        """(log of the members' mean probabilities, targets, the members' states) for one batch; accumulated
        member by member, so K members take one member's memory."""
        logp, states = None, states or [None] * len(models)
        for i, model in enumerate(models):
            logits, targets, state = self.logits(model, batch, states[i])
            states[i] = state if self.stateful else None
            member = F.log_softmax(logits.float(), dim=-1)
            logp = member if logp is None else torch.logaddexp(logp, member)
        return logp - math.log(len(models)), targets, states

    def mc_log_probs(self, model, batch, state, samples):
        """mean_log_probs of `samples` dropout passes of `model` on one batch. By default the passes run one by one;
        a task may run them as one batch of samples x rows (LanguageModelTask: 2.5x less CPU time at K = 10)."""
        return self.mean_log_probs([model] * samples, batch, state)

    def _averaged_metrics(self, split, device, log_probs, items=False):
        totals, rows, state = new_totals(), new_items(), None
        for batch in self.batches(split, device):
            logp, targets, state = log_probs(batch, state)
            tally(totals, logp, targets)
            if items:
                add_items(rows, logp, targets)
        return {**self.metrics(totals), **({"items": self._item_keys(rows)} if items else {})}

    @torch.no_grad()
    def item_stats(self, model, split, device):
        """Per-item statistics of `split` for paired tests between variants: {"nll": [[nll, count], ...]} and,
        for tasks with `correct` in their metrics, {"acc": [[correct, count], ...]}. An item is one row of an
        evaluation batch (a sentence, a caption, an utterance; a bptt chunk of the LM's stream); evaluation
        batches come in a fixed order, so item i is the same data in every run of a config."""
        if type(self).logits is Task.logits:
            return {}
        return self.ensemble_metrics([model], split, device, items=True)["items"]

    def _item_keys(self, items):
        return {"nll": items["nll"], **({"acc": items["acc"]} if self.main_metric == "acc" else {})}

    def metrics(self, totals):
        """Turn summed statistics ({"nll", "count", ...extra}) into named metrics. The default is perplexity
        per counted target (token) and the mean loss; tasks with other metrics override it."""
        mean = totals["nll"] / totals["count"]
        return {"ppl": float(torch.tensor(mean).exp()), "loss": mean}

    decodes = False  # True: final_metrics = score_items(decode_items(all items)), which DDP can share out

    def num_items(self, split):
        """How many items a decoding task decodes on `split` (sentences, images)."""
        raise NotImplementedError

    def decode_items(self, model, split, device, items):
        """The outputs (one per item, in the order of `items`, indices into the split) of a decoding task."""
        raise NotImplementedError

    def score_items(self, split, outputs, seconds):
        """(metrics, details) of every item's output, as final_metrics returns them; `seconds`: decoding time."""
        raise NotImplementedError

    def final_metrics(self, model, split, device):
        """Test-time metrics that need more than the loss (e.g. BLEU after beam search). `model` may be a list:
        an ensemble (`--ensemble N`), whose members' probabilities are averaged.

        Returns (metrics, details): metrics are numbers (reported as test_<name>); details is JSON for the
        results (e.g. the BLEU signature, example outputs). A details entry "outputs" (a list of lines) is
        written to the run directory as <split>_outputs.txt instead of into the results."""
        if not self.decodes:
            return {}, {}
        started = time.perf_counter()
        outputs = self.decode_items(model, split, device, range(self.num_items(split)))
        return self.score_items(split, outputs, time.perf_counter() - started)

    @classmethod
    def figures(cls, runs, folder, label):
        """Draw task-specific pictures from the recorded runs (their details) into `folder`, beside the
        table and the learning curves that every task gets; returns the paths written."""
        return []

    def checkpoint_extras(self):
        """What besides the weights every checkpoint holds: the one format tasks.base.load_checkpoint reads."""
        return {"task": self.name, "config": self.config, "data_state": self.data_state()}


def _load_mc_progress(path, key, device):
    """The saved progress of an MC-dropout evaluation at `path` if it belongs to this one (`key`), else None."""
    if path is None or not Path(path).exists():
        return None
    saved = torch.load(path, map_location=device, weights_only=False)
    if saved.get("key") != key:
        warnings.warn(f"{path} holds another MC-dropout evaluation (another model, split, pass counts or device): "
                      "starting afresh")
        return None
    print(f"continuing the MC-dropout evaluation saved in {path} at batch {saved['so_far'][3]}", flush=True)
    return rng_states_on_cpu(saved)


def _rng_states(device):
    device = torch.device(device)
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def _set_rng_states(states, device):
    torch.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state(states[1], torch.device(device))
