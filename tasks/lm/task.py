"""PTB word-level language modeling (paper section 4.1).

Sample from a trained checkpoint (the paper's Figure 4) with `python -m tasks.lm.sample`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import DropoutLSTM, StepOutput, init_uniform
from core.loss import linear_cross_entropy
from core.schemes import embedding_dropout
from tasks.base import Task, register
from tasks.lm.data import Corpus, batchify, bptt_chunks, ensure_ptb, num_chunks

_PAPER = dict(lr=1.0, batch_size=20, eval_batch_size=1, layers=2, embed_dropout=0.0)
PTB_TRAIN_TOKENS = 929_589  # ptb.train.txt: 887,521 words and 42,068 <eos>

PRESETS = {
    # Section 4.1 of the paper, exactly. "decay_start": lr stays at 1 for that many epochs.
    "small": dict(_PAPER, hidden=200, init=0.1, dropout=0.0, epochs=13, decay_start=4, lr_decay=2.0, bptt=20, clip=5.0),
    "medium": dict(_PAPER, hidden=650, init=0.05, dropout=0.5, epochs=39, decay_start=6, lr_decay=1.2, bptt=35, clip=5.0),
    "large": dict(_PAPER, hidden=1500, init=0.04, dropout=0.65, epochs=55, decay_start=14, lr_decay=1.15, bptt=35,
                  clip=10.0),
    # Scaled down for a 2-core CPU (NOT a paper config): both variants finish in about an hour in total.
    # scheme_dropout: each successor scheme's p, chosen on seed 1's validation perplexity (docs/schemes.md).
    "cpu": dict(_PAPER, hidden=256, init=0.1, dropout=0.2, epochs=6, decay_start=3, lr_decay=2.0, bptt=35, clip=5.0,
                scheme_dropout={"variational": 0.1, "weightdrop": 0.1, "zoneout": 0.1}),
    # Seconds on a tiny corpus; a smoke test of the machinery, not a result.
    # max_tokens: the first 2,000 tokens of each split, so the smoke test takes seconds on the real PTB too
    "tiny": dict(_PAPER, hidden=16, init=0.1, dropout=0.3, epochs=2, decay_start=1, lr_decay=2.0, bptt=5, clip=5.0,
                 batch_size=4, max_tokens=2000),
}
PRESET_NOTES = {
    "cpu": "Scaled down for a 2-core CPU (2x256, p=0.2, 6 epochs): not a paper configuration.",
    "tiny": "Smoke-test preset (seconds: the first 2,000 tokens of each split): not a result.",
}
PAPER_RESULTS = {  # Table 1 of the paper (valid / test perplexity)
    "small": {"none": {"valid_ppl": 120.7, "test_ppl": 114.5}},
    "medium": {"zaremba": {"valid_ppl": 86.2, "test_ppl": 82.7}},
    "large": {"zaremba": {"valid_ppl": 82.2, "test_ppl": 78.4}},
}


class LanguageModel(nn.Module):
    """Embedding -> dropout-LSTM -> linear softmax layer; the embedding size is the hidden size. `embed_dropout`:
    word-type dropout on the embedding matrix (Gal & Ghahramani 2016), with any scheme; 0 in the paper's presets."""

    def __init__(self, vocab_size, hidden, layers, dropout=0.0, scheme="zaremba", embed_dropout=0.0,
                 zoneout_cell=None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.embed_dropout = embed_dropout
        self.rnn = DropoutLSTM(hidden, hidden, layers, dropout, scheme, zoneout_cell=zoneout_cell)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, tokens, state=None):
        output, state = self.features(tokens, state)
        return self.decoder(output), state

    def features(self, tokens, state=None):
        """The top layer's output after its dropout (B, T, H): what the softmax layer (`decoder`) reads."""
        embedded = embedding_dropout(self.embed.weight, tokens, self.embed_dropout, self.training)
        return self.rnn(embedded, state)


def build_language_model(config, vocab_size):
    model = LanguageModel(vocab_size, config["hidden"], config["layers"], config["dropout"],
                          config.get("scheme", "zaremba"), config.get("embed_dropout", 0.0),
                          config.get("zoneout_cell"))
    init_uniform(model, config["init"])
    return model


@register
class LanguageModelTask(Task):
    name = "lm"
    description = "PTB word-level language modeling (perplexity)"
    presets = PRESETS
    preset_notes = PRESET_NOTES
    paper_results = PAPER_RESULTS
    main_metric = "ppl"
    lower_is_better = True
    stateful = True
    graph_safe = True  # every full bptt chunk has one shape; tests/test_paper.py: no reads back to the host

    paper_source = "Table 1"
    published_anchors = {  # test perplexity as printed, for the schemes of core.schemes on the same presets
        "medium": ["zaremba 82.7 (Zaremba et al. 2014, Table 1); variational 79.7, 78.6 with MC-dropout evaluation "
                   "(Gal & Ghahramani 2016, Table 1, medium untied)"],
        "large": ["zaremba 78.4 (Zaremba et al. 2014, Table 1); variational 75.2, 73.4 with MC-dropout evaluation "
                  "(Gal & Ghahramani 2016, Table 1, large untied)"],
    }
    config_keys = ("hidden", "layers", "init", "bptt", "batch_size", "eval_batch_size", "embed_dropout", "max_tokens")
    synthetic_vocab = 10000  # PTB's vocabulary size
    speed_notes = ("Random token ids of PTB's 10k vocabulary. `reference` is the pytorch/examples word_language_model "
                   "as published: dropout on the embeddings, nn.LSTM's built-in inter-layer dropout and dropout on the "
                   "LSTM output (the connections our `zaremba` scheme drops), log_softmax + NLLLoss, clipping, its "
                   "manual SGD update. `zaremba` runs on the fused nn.LSTM path, so that row is like for like; "
                   "`naive` also masks h_{t-1} and runs the explicit per-time-step cell, so it is expected to be "
                   "slower.")
    bf16_quality = ("measured on the `cpu` preset against fp32 (cpu-bf16-cpu-vs-fp32.md) and on the paper's `small` "
                    "(small-bf16-cpu.md against small.md)")

    @classmethod
    def train_items(cls, config):
        return min(config.get("max_tokens") or PTB_TRAIN_TOKENS, PTB_TRAIN_TOKENS)

    def load_data(self):
        folder, self.noncanonical = ensure_ptb(self.data_dir, self.download, custom_data=self.custom_data)
        corpus = Corpus(folder)
        self.vocab = corpus.vocab
        self.use_token_streams(corpus.splits)
        return self

    def synthetic_data(self, batches=20, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.vocab = [f"w{i}" for i in range(self.synthetic_vocab)]
        length = (batches * self.config["bptt"] + 1) * self.config["batch_size"]  # full bptt chunks
        ids = torch.randint(self.synthetic_vocab, (length,), generator=generator)
        self.use_token_streams({"train": ids, "valid": ids, "test": ids})

    def use_token_streams(self, splits):
        """Batch {split: 1-D LongTensor of token ids} into the paper's parallel streams (a subclass with another
        corpus calls this from its load_data; data_state must then give its vocabulary)."""
        sizes = {"train": self.config["batch_size"], "valid": self.config["eval_batch_size"],
                 "test": self.config["eval_batch_size"]}
        cap = self.config.get("max_tokens")  # a smoke test's cut: the first max_tokens tokens of each split
        self.streams = {split: batchify(ids[:cap], sizes[split]) for split, ids in splits.items()}
        self._on_device = {}

    def data_state(self):
        return {"vocab": self.vocab}

    def load_data_state(self, state):
        self.vocab = state["vocab"]

    def build_model(self):
        return build_language_model(self.config, len(self.vocab))

    def batches(self, split, device):
        key = (split, str(device))
        if key not in self._on_device:
            self._on_device[key] = self.streams[split].to(device)
        return bptt_chunks(self._on_device[key], self.config["bptt"])

    def num_batches(self, split):
        return num_chunks(self.streams[split], self.config["bptt"])

    def logits(self, model, batch, state):
        inputs, targets = batch
        logits, state = model(inputs, state)
        return logits, targets, state

    def mc_log_probs(self, model, batch, state, samples):
        """All `samples` passes as one batch (pass k holds rows k*B..(k+1)*B and its own state there), unless a
        mask is shared by the rows of a forward pass (weightdrop's W_hh, word-type embedding dropout)."""
        if not model.rnn.scheme.row_masks or model.embed_dropout > 0:
            return super().mc_log_probs(model, batch, state, samples)
        inputs, targets = batch
        logits, state = model(inputs.repeat(samples, 1), state)
        logp = F.log_softmax(logits.float().view(samples, *inputs.shape, -1), dim=-1).logsumexp(0)
        return logp - math.log(samples), targets, state

    def forward(self, model, batch, state):
        inputs, targets = batch
        fused = torch.is_autocast_enabled(inputs.device.type) and torch.is_grad_enabled()
        if fused and isinstance(model, LanguageModel):
            # bf16 training: the softmax layer and the loss in one (core.loss), never the fp32 logits. Evaluation
            # and fp32 keep the plain path (faster in evaluation; fp32 stays bit for bit the committed tables)
            hidden, state = model.features(inputs, state)
            nll = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), model.decoder.weight, model.decoder.bias,
                                       targets.reshape(-1))
        else:
            logits, targets, state = self.logits(model, batch, state)
            nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
        # The paper's scaling: summed over the bptt steps, averaged over the batch. Averaging over all
        # tokens instead would silently divide lr 1 and the clip norm by the bptt length.
        return StepOutput(loss=nll / inputs.size(0), nll=nll.detach(), count=targets.numel(), state=state,
                          norm=inputs.size(0))

    def training_products(self):
        """Forward and backward of the softmax layer and of each LSTM layer: the input products over the whole
        chunk, the recurrent ones one time step at a time (B rows each). The embedding is a lookup."""
        cfg = self.config
        batch, steps, hidden, vocab = cfg["batch_size"], cfg["bptt"], cfg["hidden"], len(self.vocab)
        rows, gates = batch * steps, 4 * hidden
        softmax = [(rows, hidden, vocab, 1), (rows, vocab, hidden, 1), (vocab, rows, hidden, 1)]
        per_layer = [(rows, hidden, gates, 1), (rows, gates, hidden, 1), (gates, rows, hidden, 2),  # W_ih and W_hh
                     (batch, hidden, gates, steps), (batch, gates, hidden, steps)]
        return softmax + per_layer * cfg["layers"], rows

    def speed_peers(self, device, dropout):
        from tasks.lm.reference import reference_stepper

        return {"reference": reference_stepper({**self.config, "dropout": dropout}, len(self.vocab), device)}


@torch.no_grad()
def sample(model, vocab, prompt, num_words=50, temperature=1.0, seed=1):
    """Continue `prompt` by sampling `num_words` words from the model."""
    index = {w: i for i, w in enumerate(vocab)}
    words = prompt.lower().split()
    unknown = [w for w in words if w not in index]
    if not words or unknown:
        raise ValueError(f"the prompt must be words of the PTB vocabulary; not in it: {unknown or '(empty prompt)'}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    logits, state = model(torch.tensor([[index[w] for w in words]], device=device))
    out = list(words)
    for _ in range(num_words):
        probs = F.softmax(logits[0, -1] / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator)
        out.append(vocab[token.item()])
        logits, state = model(token.view(1, 1), state)
    return " ".join(out)
