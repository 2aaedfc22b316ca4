"""Translation speed on a preset's shape: training and evaluation tokens/s through the real Trainer, and
beam-12 / greedy decoding sentences/s through tasks.mt.translate. Random token ids, so no data is needed.
The untrained model rarely emits <eos>, so decoding runs to the length limit (1.5 x source + 10 tokens in
the cpu preset): a worst case; the decoding speed of a trained model is in each run's results JSON."""
import statistics
import time

import torch

from core import Trainer, TrainConfig, Vocab
from core.vocab import SPECIALS
from tasks.mt import TranslationTask, build_seq2seq, translate

SRC_VOCAB, TGT_VOCAB = 6000, 6500  # about Multi30k En/Fr with min_freq 2
LENGTHS = (8, 20)  # sentence lengths drawn uniformly (Multi30k averages about 13 words)
SCHEMES = ("none", "zaremba")


def synthetic_vocab(size):
    return Vocab(list(SPECIALS) + [f"w{i}" for i in range(size - len(SPECIALS))])


class SyntheticMT(TranslationTask):
    """The translation task without a corpus: same model, batches and loss."""

    def __init__(self, config):  # noqa: super().__init__ would load Multi30k
        self.config = dict(config)
        self.src_vocab, self.tgt_vocab = synthetic_vocab(SRC_VOCAB), synthetic_vocab(TGT_VOCAB)


def random_batch(config, generator):
    from core import pad_sequences

    b, (lo, hi) = config["batch_size"], LENGTHS
    lengths = torch.randint(lo, hi + 1, (2, b), generator=generator)
    src = [torch.randint(len(SPECIALS), SRC_VOCAB, (int(n),), generator=generator) for n in lengths[0]]
    tgt = [torch.randint(len(SPECIALS), TGT_VOCAB, (int(n) + 2,), generator=generator) for n in lengths[1]]
    src_ids, src_len = pad_sequences(src)
    tgt_ids, _ = pad_sequences(tgt)
    return src_ids, src_len, tgt_ids


def timed(fn, device):
    """Seconds `fn()` takes, with the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(config, device, steps, warmup, repeats):
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(t.to(device) if i != 1 else t for i, t in enumerate(random_batch(config, generator)))
               for _ in range(steps)]
    tokens = sum(int((b[2][:, 1:] != 0).sum()) for b in batches)
    n_sentences = max(config["decode_batch_size"] * max(steps // 4, 1), 1)
    sentences = [[f"w{int(i)}" for i in torch.randint(SRC_VOCAB - len(SPECIALS), (int(n),), generator=generator)]
                 for n in torch.randint(LENGTHS[0], LENGTHS[1] + 1, (n_sentences,), generator=generator)]
    runners = {}
    for scheme in SCHEMES:
        task = SyntheticMT({**config, "scheme": scheme, "dropout": config["dropout"] if scheme != "none" else 0.0})
        torch.manual_seed(0)
        model = build_seq2seq(task.config, SRC_VOCAB, TGT_VOCAB)
        trainer = Trainer(task, model, TrainConfig.from_dict(config), "/nonexistent", device, progress=False)
        runners[scheme] = (task, trainer)

    def train(scheme):
        task, trainer = runners[scheme]
        trainer.model.train()
        for batch in batches:
            trainer.train_step(batch)

    @torch.no_grad()
    def evaluate(scheme):
        task, trainer = runners[scheme]
        trainer.model.eval()
        for batch in batches:
            task.forward(trainer.model, batch, None)

    def decode(scheme, beam):
        task, trainer = runners[scheme]
        translate([trainer.model], task.src_vocab, task.tgt_vocab, sentences, task.config, device, beam=beam)

    jobs = {"train_tok_s": (train, tokens), "eval_tok_s": (evaluate, tokens),
            "beam12_sent_s": (lambda s: decode(s, 12), n_sentences), "beam1_sent_s": (lambda s: decode(s, 1), n_sentences)}
    times = {scheme: {name: [] for name in jobs} for scheme in SCHEMES}
    for scheme in SCHEMES:  # warm-up: allocations and kernel choice
        for name, (fn, _) in jobs.items():
            if warmup:
                timed(lambda: fn(scheme), device)
    for _ in range(repeats):
        for scheme in SCHEMES:
            for name, (fn, _) in jobs.items():
                times[scheme][name].append(timed(lambda: fn(scheme), device))
    return {scheme: {name: jobs[name][1] / statistics.median(ts) for name, ts in named.items()}
            for scheme, named in times.items()}


def markdown(entries):
    lines = ["# mt / speed", "",
             "Training tokens/s (forward, backward, clip, optimizer step through the real Trainer), evaluation "
             "tokens/s (forward) and decoding sentences/s with beam 12 and beam 1 (greedy) on the preset's shape "
             f"(batch, embedding, hidden, layers), {SRC_VOCAB}/{TGT_VOCAB} source/target vocabularies, random "
             f"sentences of {LENGTHS[0]}-{LENGTHS[1]} tokens. Decoding runs the untrained model to the length limit "
             "(1.5 x source + 10): a worst case. Produced by `python -m benchmarks.speed --task mt`; median of "
             "interleaved repeats.", ""]
    for entry in entries:
        prov, cfg = entry["provenance"], entry["config"]
        hw = prov.get("gpu") or f"{prov['cpu_model']}, {prov['torch_threads']} threads"
        lines += [f"## preset `{entry['preset']}` on {prov['device']} ({hw})", "",
                  f"batch {cfg['batch_size']}, {cfg['layers']}x{cfg['hidden']}, embedding {cfg['emb']}, "
                  f"p={cfg['dropout']:g} for zaremba, decode batch {cfg['decode_batch_size']}; "
                  f"{entry['steps']} steps x {entry['repeats']} repeats.", "",
                  "| scheme | train tok/s | eval tok/s | beam 12 sent/s | beam 1 sent/s |", "|---|---|---|---|---|"]
        for scheme, r in entry["results"].items():
            lines.append(f"| {scheme} | {r['train_tok_s']:,.0f} | {r['eval_tok_s']:,.0f} | "
                         f"{r['beam12_sent_s']:,.1f} | {r['beam1_sent_s']:,.1f} |")
        lines += ["", f"`{prov['command']}` — commit {prov['git_commit'][:12]}, torch {prov['torch']}, "
                      f"{entry['finished']}" + (f" ({prov['note']})" if prov.get("note") else ""), ""]
    return "\n".join(lines)
