"""The one training loop every task uses.

SGD with the paper's schedule (lr constant for `decay_start` epochs, then divided by `lr_decay` every
epoch), gradient-norm clipping, stateful truncated BPTT for tasks that carry state across batches,
evaluation each epoch, best-on-valid tracking, an atomic checkpoint every epoch (and every N minutes within
one), resume that repeats an uninterrupted run exactly, SIGTERM/SIGINT saving a checkpoint before stopping,
a progress bar and a JSON-lines log.

A task supplies (see tasks/base.py): `batches(split, device)`, `num_batches(split)`,
`forward(model, batch, state) -> StepOutput`, `metrics(totals) -> dict`, `main_metric`,
`lower_is_better`, `stateful` and `checkpoint_extras()`.
"""
import json
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core import distributed
from core.graphs import StepGraphs
from core.interrupt import Interrupted, pause_point, stop_on_signals
from core.monitor import Monitor, progress_bar, rounded
from core.precision import autocast
from core.step import StepOutput, Totals, detach_state, make_optimizer
from core.utils import rng_states_on_cpu, save_torch, seed_everything, write_json, write_text


class Trainer:
    def __init__(self, task, model, config, run_dir, device, progress=True, checkpoint_every=None, label=None,
                 tensorboard=True, cuda_graphs=False, graph_capture=None):
        self.task, self.model, self.config = task, model.to(device), config
        cfg = getattr(task, "config", {})
        # what the progress bar calls this run, e.g. "speech/cpu zaremba p=0.3 seed 2"
        self.label = label or f"{task.name} {cfg.get('scheme', '')} p={cfg.get('dropout', 0):g} seed {config.seed}"
        self.tensorboard, self._monitor, self._grad_norm = tensorboard, None, None
        # run_dir None: no checkpoints (speed benchmarks drive train_step only)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.device, self.progress = torch.device(device), progress
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr, device,
                                        capturable=cuda_graphs)
        # cuda_graphs: steps replayed from CUDA graphs (core.graphs; graph_capture replaces the capture in tests)
        self.graphs = StepGraphs(self, self._train_step, self._eval_step, capture=graph_capture) if cuda_graphs else None
        self.history = []  # one dict per finished epoch
        self.best = None  # (metric, epoch)
        self.checkpoint_every = checkpoint_every  # seconds between checkpoints within an epoch (None: epoch ends)
        self.stop_requested = False  # set by SIGTERM/SIGINT: save and stop after the current step
        self.stop_signal = signal.SIGINT  # which one (the exit status says it)
        self.final_s = 0.0  # the final evaluation's seconds (0 for a finished run reused)
        self._resume_within = None  # a checkpoint taken within an epoch, to continue from

    # ---- one step and one pass -------------------------------------------------------------------
    def train_step(self, batch, state=None):
        if self.graphs is not None:
            return self.graphs.train_step(batch, state)
        return self._train_step(batch, state)

    def eval_step(self, batch, state=None):
        """One evaluation forward pass (call under torch.no_grad, the model in eval mode)."""
        if self.graphs is not None:
            return self.graphs.eval_step(batch, state)
        return self._eval_step(batch, state)

    def _eval_step(self, batch, state):
        with autocast(self.config.precision, self.device):
            out = self.task.forward(self.model, batch, state)
        out.state = out.state if self.task.stateful else None
        return out

    def _train_step(self, batch, state):
        parallel = distributed.world_size() > 1
        if parallel:
            batch = distributed.shard(batch)
        out = None
        if not parallel or distributed.rows(batch):  # a rank whose shard is empty only adds zero gradients
            with autocast(self.config.precision, self.device):
                out = self.task.forward(self.model, batch, state)
        self.optimizer.zero_grad(set_to_none=True)
        if parallel:
            # each rank's loss weighted by its share of the global normaliser, gradients summed: the gradient
            # of the global batch's loss (see core.distributed)
            norm = 0.0 if out is None else (out.norm if out.norm is not None else 1.0)
            total = distributed.all_reduce_sum(norm, self.device)
            if out is not None:
                (out.loss * (norm / total)).backward()
            distributed.sum_gradients(self.model)
            if out is None:
                out = StepOutput(loss=None, nll=torch.zeros((), device=self.device), count=0, state=state)
        else:
            out.loss.backward()
        if self.config.clip > 0:  # the norm stays on the device; it is read once per log interval
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip, foreach=True)
        self.optimizer.step()
        out.state = detach_state(out.state) if self.task.stateful else None
        return out

    def train_epoch(self, epoch):
        """One pass over the training batches. The epoch's batch order comes from torch's RNG as it is at the
        start of the epoch, so a checkpoint taken within the epoch stores that state and the number of steps
        done: resuming redraws the same order, skips those batches and restores the RNG of the moment."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(epoch)
        epoch_rng, totals, state, done = torch.get_rng_state(), Totals(), None, 0
        within, self._resume_within = self._resume_within, None
        if within is not None:
            epoch_rng, done, state = within["epoch_rng"], within["step"], within["state"]
            totals.restore(within["totals"])
            torch.set_rng_state(epoch_rng)
        parallel, shared_after = distributed.world_size() > 1, None
        started, last_save, counted_before = time.time(), time.time(), totals.count  # rates: this process's steps
        bar = self._bar("train", epoch, initial=done)
        batches = self.task.batches("train", self.device)
        per_epoch = self.task.num_batches("train")
        for step, batch in enumerate(batches, 1):
            pause_point("training")  # tests send their signals here
            if parallel and step == 1:  # the batch order is drawn (shared): dropout uses this rank's own stream
                shared_after = torch.get_rng_state()
                torch.set_rng_state(self.rank_rng)
            if step <= done:  # already trained before the checkpoint this run resumed from
                if step == done:
                    torch.set_rng_state(within["rng_ranks"][distributed.rank()] if parallel else within["rng"])
                continue
            out = self.train_step(batch, state)
            state = out.state
            totals.add(out)
            if step % self.config.log_interval == 0:
                self._check_finite(totals, epoch, step)
                tok_s = (totals.count - counted_before) / max(time.time() - started, 1e-9)
                bar.set_postfix(loss=f"{totals.mean_nll():.3f}", tok_s=f"{tok_s:.0f}",
                                lr=f"{self.config.lr_at(epoch):.3g}")
                self._log_step(epoch, step, per_epoch, totals, tok_s)
            bar.update()
            due = self.checkpoint_every is not None and time.time() - last_save >= self.checkpoint_every
            if parallel:  # every rank must take the same decisions (they meet in collectives)
                due, self.stop_requested = distributed.any_rank((due, self.stop_requested), self.device)
            if self.run_dir is not None and (due or self.stop_requested):
                ranks = distributed.gather_rng_states(torch.get_rng_state()) if parallel else None
                self._save_checkpoint(epoch - 1, within={"epoch_rng": epoch_rng, "step": step, "state": state,
                                                         "totals": totals.as_dict(), "rng": torch.get_rng_state(),
                                                         "rng_ranks": ranks})
                last_save = time.time()
                if self.stop_requested:
                    bar.close()
                    raise Interrupted(self.run_dir / "checkpoint.pt", self.stop_signal)
        bar.close()
        if parallel and shared_after is not None:
            self.rank_rng = torch.get_rng_state()
            torch.set_rng_state(shared_after)
        if parallel:
            totals = Totals.from_dict(distributed.all_reduce_totals(totals.as_dict(), self.device))
        self._check_finite(totals, epoch, "end")
        return self.task.metrics(totals.as_dict())

    @torch.no_grad()
    def evaluate(self, split, sharded=True):
        """The split's metrics; under DDP (and `sharded`) each rank evaluates its rows and the sums are added."""
        self.model.eval()
        parallel = sharded and distributed.world_size() > 1
        totals, state = Totals(), None
        for batch in self.task.batches(split, self.device):
            if parallel:
                batch = distributed.shard(batch)
                if not distributed.rows(batch):
                    continue
            out = self.eval_step(batch, state)
            state = out.state
            totals.add(out)
        summed = distributed.all_reduce_totals(totals.as_dict(), self.device) if parallel else totals.as_dict()
        return self.task.metrics(summed)

    # ---- the whole run -----------------------------------------------------------------------------
    def fit(self, resume=False, test=True):
        """Train all epochs (continuing from the last checkpoint with `resume`), then evaluate the
        best-on-valid model on the test split (`test=False`: selection runs, which never read it).
        Returns the result dict also saved as result.json."""
        seed_everything(self.config.seed)
        if distributed.world_size() > 1:
            distributed.broadcast_parameters(self.model)
            stream = torch.Generator().manual_seed(self.config.seed * 1_000_003 + distributed.rank())
            self.rank_rng = stream.get_state()  # this rank's dropout masks (the batch order stays shared)
        start = self._load_checkpoint() + 1 if resume else 1
        if start > self.config.epochs and (done := self._finished_result(test)) is not None:
            return done  # resuming a command: this run is complete, its test split is not evaluated again
        if resume and (start > 1 or self._resume_within):
            self.monitor.note({"kind": "resumed", "epoch": start,
                               "step": (self._resume_within or {}).get("step", 0)})
        # an attempt that saved no checkpoint left its log: its lines stay, and the new attempt's start is marked
        elif resume and self.run_dir is not None and (self.run_dir / "log.jsonl").exists() and self.monitor.enabled:
            self.monitor.note({"kind": "restarted", "why": "no checkpoint to resume from: training from the start"})
        try:
            with stop_on_signals(self):
                for epoch in range(start, self.config.epochs + 1):
                    self._run_epoch(epoch)
                return self._finish(test)
        finally:
            if self._monitor is not None:
                self._monitor.close()
                self._monitor = None

    def _run_epoch(self, epoch):
        t0 = time.time()
        train = self.train_epoch(epoch)
        if self.task.eval_train:  # the task reports train metrics measured without dropout
            train = {**self.evaluate("train"), **{f"running_{k}": v for k, v in train.items()}}
        valid = self.evaluate("valid")
        record = {"epoch": epoch, "lr": self.config.lr_at(epoch), "wall_s": round(time.time() - t0, 2),
                  **{f"train_{k}": v for k, v in train.items()}, **{f"valid_{k}": v for k, v in valid.items()}}
        self.history.append(record)
        score = valid[self.task.main_metric]
        if self.best is None or (score < self.best[0] if self.task.lower_is_better else score > self.best[0]):
            self.best = (score, epoch)
            if distributed.is_main():
                save_torch({"model": self.model.state_dict(), "epoch": epoch, **self.task.checkpoint_extras()},
                           self.run_dir / "best.pt")
        self._save_checkpoint(epoch)
        watched = self.tensorboard and self.run_dir is not None and distributed.is_main()
        self.monitor.epoch(record, self.task.epoch_examples(self.model, self.device) if watched else ())
        if distributed.is_main():
            tqdm.write(json.dumps(rounded(record)))
        if distributed.world_size() > 1:
            self.stop_requested = distributed.all_reduce_sum(self.stop_requested, self.device) > 0
        if self.stop_requested:
            raise Interrupted(self.run_dir / "checkpoint.pt", self.stop_signal)

    def _finish(self, test=True):
        """Load the best-on-valid model; decode validation (its decoding metrics are reported beside the loss,
        never used to choose anything here), then touch the test split once: loss, per-item statistics for
        the paired tests, and the decoding metrics. Under DDP every rank evaluates and decodes its share, and
        rank 0 scores, writes and returns the result (the other ranks return None)."""
        started = time.time()
        distributed.barrier()  # rank 0 has written best.pt
        best = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=False)
        self.model.load_state_dict(best["model"])
        valid_extra, _ = self._decode("valid")
        if distributed.world_size() > 1:
            self.stop_requested = distributed.all_reduce_sum(self.stop_requested, self.device) > 0
        if self.stop_requested:  # the last checkpoint holds every epoch: --resume redoes only this evaluation
            raise Interrupted(self.run_dir / "checkpoint.pt", self.stop_signal)
        if test:
            self.phase = "test"  # a signal now lets the test pass finish (stop_on_signals says so)
            test = self.evaluate("test")
            extra, details = self._decode("test")
            if not distributed.is_main():
                return None
            test.update(extra)
            items = details.pop("items", {})
            with autocast(self.config.precision, self.device):
                items.update(self.task.item_stats(self.model, "test", self.device))
            details["items"] = items
        elif not distributed.is_main():
            return None
        else:
            test, details = {}, {"test": "not evaluated (a selection run: --valid-only)"}
        best_record = self.history[best["epoch"] - 1]
        metrics = {k: v for k, v in best_record.items() if k.startswith(("train_", "valid_"))}
        metrics.update({f"valid_{k}": v for k, v in valid_extra.items()})
        metrics.update({f"test_{k}": v for k, v in test.items()})
        result = {"metrics": metrics, "best_epoch": best["epoch"], "epochs": len(self.history),
                  "wall_s": round(sum(r["wall_s"] for r in self.history), 1), "history": self.history,
                  "details": details}
        self.final_s = round(time.time() - started, 3)  # ms: a tiny run's final evaluation takes less than 0.05 s
        write_json(self.run_dir / "result.json", result)
        return result

    def _finished_result(self, test):
        """The result.json of this very run (same history as the checkpoint, same test/valid-only mode), or None.
        Single process only: under DDP other nodes may not see the file, so the evaluation is redone."""
        path = self.run_dir / "result.json"
        if distributed.world_size() > 1 or not path.exists():
            return None
        result = json.loads(path.read_text())
        tested = any(k.startswith("test_") for k in result.get("metrics", {}))
        return result if result.get("history") == self.history and tested == test else None

    def _decode(self, split):
        """The task's decoding metrics on `split` (BLEU after beam search, ...); outputs go to <split>_outputs.txt.
        Under DDP a task that decodes item by item (`decodes`) has its items shared out and gathered in order;
        rank 0 scores them (the other ranks get ({}, {}))."""
        with autocast(self.config.precision, self.device):
            if distributed.world_size() > 1 and getattr(self.task, "decodes", False):
                started = time.perf_counter()
                mine = distributed.shard_range(self.task.num_items(split))
                outputs = distributed.gather_lists(self.task.decode_items(self.model, split, self.device, mine))
                if not distributed.is_main():
                    return {}, {}
                metrics, details = self.task.score_items(split, outputs, time.perf_counter() - started)
            elif distributed.is_main():
                metrics, details = self.task.final_metrics(self.model, split, self.device)
            else:
                return {}, {}
        details = dict(details)
        if "outputs" in details:
            write_text(self.run_dir / f"{split}_outputs.txt", "".join(line + "\n" for line in details.pop("outputs")))
        return metrics, details

    # ---- checkpoints -------------------------------------------------------------------------------
    def _save_checkpoint(self, epoch, within=None):
        """`epoch`: the last finished epoch; `within`: the position in the next one (see train_epoch). Under DDP
        every rank calls it (its dropout stream is gathered) and rank 0 writes."""
        ranks = None
        if distributed.world_size() > 1 and within is None:
            ranks = distributed.gather_rng_states(self.rank_rng)
        if not distributed.is_main():
            return
        # a failed write is a WriteError naming the file and the cause; the previous checkpoint is still whole
        save_torch({
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "history": self.history, "best": self.best, "config": asdict(self.config),
            "rng_cpu": torch.get_rng_state(), "within": within, "rng_ranks": ranks,
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }, self.run_dir / "checkpoint.pt")

    def _load_checkpoint(self):
        """Restore the last finished epoch; returns its number (0 when there is nothing to resume)."""
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return 0
        ckpt = rng_states_on_cpu(torch.load(path, map_location=self.device, weights_only=False))
        # checkpoints from before the precision setting were fp32
        same_run = {"precision": "fp32", **ckpt["config"], "epochs": None} == {**asdict(self.config), "epochs": None}
        if not same_run or ckpt["epoch"] > self.config.epochs:
            raise ValueError(f"cannot resume from {path}: it was trained with {ckpt['config']}, not {asdict(self.config)}; "
                             "drop --resume or use another run directory")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.history, self.best = ckpt["history"], None if ckpt["best"] is None else tuple(ckpt["best"])
        self._resume_within = ckpt.get("within")
        torch.set_rng_state(ckpt["rng_cpu"])
        if distributed.world_size() > 1:
            ranks = (self._resume_within or {}).get("rng_ranks") or ckpt.get("rng_ranks")
            if ranks is None or len(ranks) != distributed.world_size():
                raise ValueError(f"cannot resume {path} on {distributed.world_size()} processes: it was written by "
                                 f"{1 if ranks is None else len(ranks)}; resume with the same --nproc_per_node x nodes")
            self.rank_rng = ranks[distributed.rank()]
        if ckpt["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
        return ckpt["epoch"]

    # ---- helpers -----------------------------------------------------------------------------------
    def _bar(self, split, epoch, initial=0):
        return progress_bar(self.task.num_batches(split), f"{self.label} epoch {epoch}/{self.config.epochs} {split}",
                            initial, enabled=self.progress and distributed.is_main())

    @property
    def monitor(self):
        """log.jsonl and TensorBoard (rank 0 of a run with a run dir), opened at first use."""
        if self._monitor is None:
            self._monitor = Monitor(self.run_dir, enabled=distributed.is_main(), tensorboard=self.tensorboard)
            self._monitor.config({**getattr(self.task, "config", {}), **asdict(self.config)}, self.label)
        return self._monitor

    def _log_step(self, epoch, step, per_epoch, totals, tok_s):
        if not self.monitor.enabled:  # other DDP ranks, runs without a run dir: no reads back from the device
            return
        record = {"epoch": epoch, "step": step, **{f"train_{k}": v for k, v in self.task.metrics(totals.as_dict()).items()},
                  "lr": self.config.lr_at(epoch), "tok_s": tok_s}
        if self._grad_norm is not None:
            record["grad_norm"] = float(self._grad_norm)  # before clipping
        self.monitor.step((epoch - 1) * per_epoch + step, record)

    def _check_finite(self, totals, epoch, step):
        loss = totals.mean_nll()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at epoch {epoch}, step {step}: the run diverged. "
                f"Lower the learning rate (lr={self.config.lr_at(epoch):g}) or the clip norm (clip={self.config.clip:g}); "
                f"the last good checkpoint is {self.run_dir / 'checkpoint.pt'}")
