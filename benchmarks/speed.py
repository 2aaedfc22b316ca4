"""Training and evaluation tokens/s of each dropout scheme against a plain PyTorch reference loop.

    python -m benchmarks.speed --task lm --preset small
    python -m benchmarks.speed --task lm --preset medium --device cuda

The reference is the pytorch/examples word_language_model shape: embedding -> nn.LSTM with its built-in
inter-layer dropout -> linear -> cross-entropy, SGD, gradient clipping. Our schemes run through the real
Trainer.train_step. Timings are interleaved (reference, none, zaremba, naive, then again) and the median
of the repeats is reported. Inputs are random token ids of the PTB vocabulary size, so no data is needed.
Writes results/lm/speed.json (all measurements so far) and results/lm/speed.md.
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
from benchmarks.report import load_runs
from tasks.lm import PRESETS, LanguageModelTask, build_language_model

VOCAB = 10000
IMPLS = ("reference", "none", "zaremba", "naive")


class ReferenceLM(nn.Module):
    """pytorch/examples word_language_model, LSTM variant, time-major."""

    def __init__(self, vocab, hidden, layers, dropout):
        super().__init__()
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output), hidden


class SyntheticLM(LanguageModelTask):
    """The LM task without a corpus: same model, loss and scaling."""

    def __init__(self, config):  # noqa: super().__init__ would load PTB
        self.config = dict(config)

    def build_model(self):
        return build_language_model(self.config, VOCAB)


def reference_stepper(config, device):
    model = ReferenceLM(VOCAB, config["hidden"], config["layers"], config["dropout"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    hidden = [None]

    def train(x, y):  # x, y: (B, T) -> time-major as in the reference
        model.train()
        h = None if hidden[0] is None else tuple(s.detach() for s in hidden[0])
        output, hidden[0] = model(x.t(), h)
        loss = F.cross_entropy(output.reshape(-1, VOCAB), y.t().reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
        optimizer.step()

    @torch.no_grad()
    def evaluate(x, y):
        model.eval()
        output, _ = model(x.t(), None)
        F.cross_entropy(output.reshape(-1, VOCAB), y.t().reshape(-1))

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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for x, y in batches:
        fn(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


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
             "pytorch/examples loop: embedding -> nn.LSTM (built-in inter-layer dropout) -> linear -> "
             "cross-entropy, SGD, clipping. `zaremba` is the paper's scheme on the fused nn.LSTM path; `naive` "
             "also masks h_{t-1} and runs the explicit per-time-step cell, so it is expected to be slower. "
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
                      f"{entry['finished']}", ""]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lm", help="only lm has a speed benchmark so far")
    parser.add_argument("--preset", default="small", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    if args.task != "lm":
        parser.error(f"--task {args.task!r} has no speed benchmark; only lm does")
    if args.preset not in PRESETS:
        parser.error(f"--preset {args.preset!r} is not an lm preset; choose one of: {', '.join(PRESETS)}")
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    try:
        device = pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dict(PRESETS[args.preset])
    config["dropout"] = config["dropout"] or 0.5  # a p=0 preset would time no dropout at all
    origin = provenance(device, "python -m benchmarks.speed " + shlex.join(argv))
    results = measure(config, device, args.steps, args.warmup, args.repeats)
    entry = {"preset": args.preset, "config": config, "steps": args.steps, "repeats": args.repeats,
             "results": results, "provenance": origin, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(args.out) / "lm" / "speed.json"
    same = lambda e: (e["preset"], e["provenance"]["device"]) == (args.preset, origin["device"])  # noqa: E731
    entries = [e for e in load_runs(path) if not same(e)] + [entry]
    write_json(path, entries)
    write_text(path.with_suffix(".md"), markdown(entries))
    print(markdown([entry]))


if __name__ == "__main__":
    main()
