"""Speed of each dropout scheme: training and evaluation tokens/s (and decoding sentences/s for mt).

    python -m benchmarks.speed --task lm --preset small
    python -m benchmarks.speed --task lm --preset medium --device cuda
    python -m benchmarks.speed --task mt                 # the cpu preset's shape, beam 12 and beam 1

lm: against the pytorch/examples word_language_model as published (RNNModel, LSTM): dropout on the
embeddings, nn.LSTM's inter-layer dropout, dropout on the LSTM output (the same connections as our
`zaremba` scheme), log_softmax + NLLLoss, gradient clipping and its manual SGD update. Our schemes run
through the real Trainer.train_step. Timings are interleaved (reference, none, zaremba, naive, then again)
and the median of the repeats is reported. Inputs are random token ids of the PTB vocabulary size, so no
data is needed. Writes results/<task>/speed.json (all measurements so far) and results/<task>/speed.md.
"""
import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import Trainer, TrainConfig
from core.utils import pick_device, provenance, write_json, write_text
from benchmarks import speed_mt
from benchmarks.report import load_runs
from tasks import get_task
from tasks.lm import LanguageModelTask, build_language_model

VOCAB = 10000
IMPLS = ("reference", "none", "zaremba", "naive")


class ReferenceLM(nn.Module):
    """pytorch/examples word_language_model/model.py RNNModel (LSTM), as published: time-major."""

    def __init__(self, vocab, hidden, layers, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return F.log_softmax(decoded, dim=1), hidden


class SyntheticLM(LanguageModelTask):
    """The LM task without a corpus: same model, loss and scaling."""

    def __init__(self, config):  # noqa: super().__init__ would load PTB
        self.config = dict(config)

    def build_model(self):
        return build_language_model(self.config, VOCAB)


def reference_stepper(config, device):
    model = ReferenceLM(VOCAB, config["hidden"], config["layers"], config["dropout"]).to(device)
    criterion = nn.NLLLoss()
    hidden = [None]

    def train(x, y):  # x, y: (B, T) -> time-major as in the reference; its train() loop body
        model.train()
        h = None if hidden[0] is None else tuple(s.detach() for s in hidden[0])  # repackage_hidden
        model.zero_grad()
        output, hidden[0] = model(x.t(), h)
        loss = criterion(output, y.t().reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-config["lr"])

    @torch.no_grad()
    def evaluate(x, y):
        model.eval()
        output, _ = model(x.t(), None)
        criterion(output, y.t().reshape(-1))

    return train, evaluate


def suite_stepper(config, scheme, device):
    task = SyntheticLM({**config, "scheme": scheme})
    trainer = Trainer(task, task.build_model(), TrainConfig.from_dict(config), "/nonexistent", device, progress=False)
    state = [None]

    def train(x, y):
        trainer.model.train()
        state[0] = trainer.train_step((x, y), state[0]).state

    @torch.no_grad()
    def evaluate(x, y):
        trainer.model.eval()
        task.forward(trainer.model, (x, y), None)

    return train, evaluate


def time_steps(fn, batches, device):
    return speed_mt.timed(lambda: [fn(x, y) for x, y in batches], device)


def measure(config, device, steps, warmup, repeats):
    torch.manual_seed(0)
    b, t = config["batch_size"], config["bptt"]
    data = torch.randint(VOCAB, (steps, b, t + 1), device=device)
    batches = [(d[:, :-1], d[:, 1:]) for d in data]
    steppers = {impl: reference_stepper(config, device) if impl == "reference" else suite_stepper(config, impl, device)
                for impl in IMPLS}
    times = {impl: {"train": [], "eval": []} for impl in IMPLS}
    for impl, (train, evaluate) in steppers.items():
        time_steps(train, batches[:warmup], device)  # first steps allocate and pick kernels
        time_steps(evaluate, batches[:warmup], device)
    for _ in range(repeats):
        for impl, (train, evaluate) in steppers.items():
            times[impl]["train"].append(time_steps(train, batches, device))
            times[impl]["eval"].append(time_steps(evaluate, batches, device))
    tokens = steps * b * t
    return {impl: {f"{mode}_tok_s": tokens / statistics.median(ts) for mode, ts in modes.items()}
            for impl, modes in times.items()}


def markdown(entries):
    lines = ["# lm / speed", "",
             "Tokens per second of training (forward, backward, clip, SGD step) and evaluation (forward) on the "
             "preset's shape (batch, bptt, hidden, layers, 10k vocab), random tokens. `reference` is the "
             "pytorch/examples word_language_model as published: dropout on the embeddings, nn.LSTM's built-in "
             "inter-layer dropout and dropout on the LSTM output (the connections our `zaremba` scheme drops), "
             "log_softmax + NLLLoss, clipping, its manual SGD update. `zaremba` is the paper's scheme on the "
             "fused nn.LSTM path, so that row is like for like; `naive` also masks h_{t-1} and runs the explicit "
             "per-time-step cell, so it is expected to be slower. "
             "Produced by `python -m benchmarks.speed`; median of interleaved repeats.", ""]
    for entry in entries:
        prov = entry["provenance"]
        hw = prov.get("gpu") or f"{prov['cpu_model']}, {prov['torch_threads']} threads"
        lines += [f"## preset `{entry['preset']}` on {prov['device']} ({hw})", "",
                  f"batch {entry['config']['batch_size']}, bptt {entry['config']['bptt']}, "
                  f"{entry['config']['layers']}x{entry['config']['hidden']}, p={entry['config']['dropout']:g} for "
                  f"reference/zaremba/naive; {entry['steps']} steps x {entry['repeats']} repeats.", "",
                  "| implementation | train tok/s | vs reference | eval tok/s | vs reference |", "|---|---|---|---|---|"]
        ref = entry["results"]["reference"]
        for impl, r in entry["results"].items():
            lines.append(f"| {impl} | {r['train_tok_s']:,.0f} | {r['train_tok_s'] / ref['train_tok_s']:.2f}x | "
                         f"{r['eval_tok_s']:,.0f} | {r['eval_tok_s'] / ref['eval_tok_s']:.2f}x |")
        lines += ["", f"`{prov['command']}` — commit {prov['git_commit'][:12]}, torch {prov['torch']}, "
                      f"{entry['finished']}" + (f" ({prov['note']})" if prov.get("note") else ""), ""]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lm", help="lm or mt")
    parser.add_argument("--preset", help="a preset of the task (default: the task's default preset)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    if args.task not in BENCHMARKS:
        parser.error(f"--task {args.task!r} has no speed benchmark; choose one of: {', '.join(BENCHMARKS)}")
    task_cls = get_task(args.task)
    preset = args.preset or task_cls.default_preset
    if preset not in task_cls.presets:
        parser.error(f"--preset {preset!r} is not a preset of task {args.task}; choose one of: "
                     f"{', '.join(task_cls.presets)}")
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    try:
        device = pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dict(task_cls.presets[preset])
    config["dropout"] = config["dropout"] or 0.5  # a p=0 preset would time no dropout at all
    origin = provenance(device, "python -m benchmarks.speed " + shlex.join(argv))
    measure_fn, markdown_fn = BENCHMARKS[args.task]
    results = measure_fn(config, device, args.steps, args.warmup, args.repeats)
    entry = {"preset": preset, "config": config, "steps": args.steps, "repeats": args.repeats,
             "results": results, "provenance": origin, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(args.out) / args.task / "speed.json"
    same = lambda e: (e["preset"], e["provenance"]["device"]) == (preset, origin["device"])  # noqa: E731
    entries = [e for e in load_runs(path) if not same(e)] + [entry]
    write_json(path, entries)
    write_text(path.with_suffix(".md"), markdown_fn(entries))
    print(markdown_fn([entry]))


BENCHMARKS = {"lm": (measure, markdown), "mt": (speed_mt.measure, speed_mt.markdown)}


if __name__ == "__main__":
    main()
