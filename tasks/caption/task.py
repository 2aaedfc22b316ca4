"""CNN -> LSTM image captioning (paper section 4.4, Table 4): Show and Tell (Vinyals et al., 2015) with the
paper's dropout.

A frozen ImageNet CNN maps the image to a vector (tasks/caption/encoders.py computes and caches it); its linear
projection is the decoder LSTM's first input, then the words. The output after the image step is not scored;
from <bos> on, every step predicts the next word. The variant's scheme and p act on the non-recurrent
connections (the image / word embedding going in, before the softmax), never on h_{t-1} -> h_t.
"""
from pathlib import Path

import torch
import torch.nn as nn

from core import DropoutLSTM, StepOutput, Vocab, beam_search, bucket_batches, init_uniform, pad_sequences, sequence_nll
from core.beam import output_logits
from core.download import data_root
from core.vocab import SPECIALS
from tasks.base import IGNORE, Task, first_seed_details, register
from tasks.caption.data import load_caption_splits, tokenize
from tasks.caption.encoders import make_encoder, split_features
from tasks.caption.metrics import coco_caption_scores

# Other corpora: --set corpus=coco (annotations/captions_*2014.json; valid/test cut from val2014 by the coco_*
# sizes), corpus=karpathy (coco/dataset_coco.json) or corpus=hub (a `datasets` corpus with images, one row per
# image, e.g. hub_name=jxie/flickr8k).
_DATA = dict(corpus="flickr8k", encoder="efficientnet-lite0", encoder_weights=None, coco_valid_size=5000,
             coco_test_size=5000, hub_name="", hub_config=None, hub_data_dir=None, hub_train="train",
             hub_valid="validation", hub_test="test", hub_image_column="image",
             hub_caption_columns="caption_0,caption_1,caption_2,caption_3,caption_4")
_DECODE = dict(beam=3, max_caption_len=20, length_penalty=0.0, decode_batch_size=100)
PRESETS = {
    # Scaled down for a 2-core CPU (NOT the paper's configuration); sized by measurement, see docs/tasks.md.
    # Three seeds of each variant and their ensembles (the paper's Table 4 has an ensemble row): ~50 minutes.
    "cpu": dict(_DATA, **_DECODE, emb=512, hidden=512, layers=1, init=0.08, dropout=0.5, min_freq=5, max_vocab=None,
                batch_size=64, eval_batch_size=256, optimizer="adam", lr=0.002, epochs=12, decay_start=5,
                lr_decay=1.5, clip=5.0, ensemble=3,
                # scheme_dropout: each successor scheme's p, chosen on seed 1's validation perplexity
                # (results/caption/cpu-selection.md).
                scheme_dropout={"variational": 0.35, "weightdrop": 0.3, "zoneout": 0.3}),
    # Section 4.4 / Vinyals et al. (2015): MSCOCO (Karpathy split), GoogLeNet features, one LSTM layer with
    # 512-d embeddings and memory, beam 20. p=0.3 as in the authors' im2txt release (keep prob 0.7); the paper
    # does not state its p. SGD as in im2txt (lr 2 on the per-token mean loss, halved every 8 epochs, clip 5,
    # batch 32); our loss sums a caption's ~12 tokens, hence lr 2/12. For a GPU.
    "paper": dict(_DATA, **{**_DECODE, "beam": 20}, corpus="karpathy", encoder="googlenet", emb=512, hidden=512,
                  layers=1, init=0.08, dropout=0.3, min_freq=4, max_vocab=None, batch_size=32, eval_batch_size=256,
                  optimizer="sgd", lr=2.0 / 12, epochs=24, decay_start=8, lr_decay=2 ** (1 / 8), clip=5.0),
    # Seconds on a few images with a tiny random CNN (max_images: the first images of each split, so on the real
    # Flickr8k too); a smoke test of the machinery, not a result.
    "tiny": dict(_DATA, encoder="random-cnn", feature_dim=16, beam=2, max_caption_len=8, length_penalty=0.0,
                 decode_batch_size=4, emb=16, hidden=16, layers=1, init=0.1, dropout=0.3, min_freq=1, max_vocab=None,
                 batch_size=8, eval_batch_size=8, optimizer="adam", lr=0.01, epochs=2, decay_start=1, lr_decay=2.0,
                 clip=5.0, max_images=100),
}
PRESET_NOTES = {
    "cpu": "Scaled down for a 2-core CPU (Flickr8k, EfficientNet-Lite0 features, 1x512, p=0.5, Adam, 12 epochs): "
           "not a paper configuration; the paper's numbers are MSCOCO with GoogLeNet features.",
    "tiny": "Smoke-test preset (seconds: at most the first 100 images of each split, a random CNN): not a result.",
}
_TABLE4 = {"none": {"test_ppl": 8.47, "test_bleu4": 23.5}, "zaremba": {"test_ppl": 7.99, "test_bleu4": 24.3},
           "none ensemble": {"test_ppl": 7.5, "test_bleu4": 24.4}}
# Table 4 (MSCOCO): shown beside the cpu preset too, for the direction and size of the effect only (different
# data, encoder and model size). The paper's ensemble has 10 non-regularized members.
PAPER_RESULTS = {"paper": _TABLE4, "cpu": _TABLE4}
EXAMPLES = 6  # example test images kept in the results (and drawn in examples.png)


class CaptionModel(nn.Module):
    def __init__(self, feature_dim, vocab_size, emb, hidden, layers=1, dropout=0.0, scheme="zaremba",
                 zoneout_cell=None):
        super().__init__()
        self.image_proj = nn.Linear(feature_dim, emb)
        self.embed = nn.Embedding(vocab_size, emb)
        self.rnn = DropoutLSTM(emb, hidden, layers, dropout, scheme, zoneout_cell=zoneout_cell)
        self.out = nn.Linear(hidden, vocab_size)

    def start(self, features):
        """Feed the image vectors (B, feature_dim): the decoder state before <bos>."""
        _, state = self.rnn(self.image_proj(features)[:, None])
        return state

    def forward(self, features, tokens_in):
        """Teacher forcing: features (B, D), tokens_in (B, T) starting with <bos> -> logits (B, T, V), the
        prediction of each next word. The image vector is the first input of the same LSTM pass."""
        inputs = torch.cat([self.image_proj(features)[:, None], self.embed(tokens_in)], dim=1)
        output, _ = self.rnn(inputs)
        return self.out(output[:, 1:])

    def step(self, tokens, state):
        """One decoding step for core.beam_search: tokens (N,) -> (logits (N, V), state)."""
        output, state = self.rnn.step(self.embed(tokens), state)
        return output_logits(self.out, output), state


@register
class CaptionTask(Task):
    name = "caption"
    description = "CNN -> LSTM image captioning (test perplexity, BLEU/METEOR/ROUGE-L/CIDEr)"
    presets = PRESETS
    preset_notes = PRESET_NOTES
    paper_results = PAPER_RESULTS
    paper_source = "Table 4 (MSCOCO)"
    main_metric = "ppl"
    lower_is_better = True
    extra_test_metrics = (("bleu4", "BLEU-4"), ("bleu1", "BLEU-1"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"),
                          ("cider", "CIDEr"))
    bounded_metrics = {k: (0, 100) for k in ("bleu4", "bleu1", "meteor", "rouge_l")}  # x100; CIDEr can pass 100
    results_notes = ("Perplexity is per caption token (the words and <eos>; the image step is not scored) over all "
                     "5 reference captions of each image. Captions are decoded with the beam search of the config "
                     "below and scored with pycocoevalcap (its PTB tokenizer; BLEU-1..4, METEOR, ROUGE-L, CIDEr "
                     "x100) against all 5 references. SPICE is left out: it downloads models, which is not "
                     "possible offline. The paper's ensemble (Table 4) averages 10 non-regularized models; ours, "
                     "the seeds of its row. Flickr8k and MSCOCO are read from your copy: neither has a canonical "
                     "download to check checksums against, so the files are not verified.")

    config_keys = (*_DATA, "feature_dim", *_DECODE, "emb", "hidden", "layers", "init", "min_freq",
                   "max_vocab", "batch_size", "eval_batch_size", "max_images")
    needs = (("pycocoevalcap", "BLEU, METEOR, ROUGE-L and CIDEr"),)
    needs_programs = (("java", "pycocoevalcap's tokenizer and METEOR"),)
    synthetic_sizes = (3000, 1280)  # vocabulary (about Flickr8k's at min_freq 5), EfficientNet-Lite0 feature size
    synthetic_lengths = (8, 20)

    def load_data(self):
        cfg = self.config
        self.sets = {split: images.first(cfg.get("max_images"))
                     for split, images in load_caption_splits(cfg, self.data_dir, self.cache_dir).items()}
        train = [tokenize(c) for caps in self.sets["train"].captions for c in caps]
        self.vocab = Vocab.build(train, cfg["min_freq"], cfg["max_vocab"])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.features, self.cache_hit = split_features(self.sets, make_encoder(cfg), self.cache_dir, device)
        self.feature_dim = self.features["train"].size(1)
        self.data = {split: self._encode(captions) for split, captions in self.sets.items()}
        return self

    def synthetic_data(self, batches=20, seed=0):
        generator = torch.Generator().manual_seed(seed)
        vocab_size, self.feature_dim = self.synthetic_sizes
        self.vocab = Vocab(list(SPECIALS) + [f"w{i}" for i in range(vocab_size - len(SPECIALS))])
        images = batches * self.config["batch_size"]
        lengths = torch.randint(*self.synthetic_lengths, (images,), generator=generator)
        samples = [(i, [self.vocab.bos, *torch.randint(len(SPECIALS), vocab_size, (int(n),), generator=generator).tolist(),
                        self.vocab.eos]) for i, n in enumerate(lengths)]
        features = torch.randn(images, self.feature_dim, generator=generator)
        self.data = {split: samples for split in ("train", "valid", "test")}
        self.features = {split: features for split in ("train", "valid", "test")}

    def data_info(self):
        if self.config["corpus"] == "hub":  # the datasets library verifies its own downloads
            return super().data_info()
        return {**super().data_info(), "canonical": None,
                "checksums": f"not verified: {self.config['corpus']} has no canonical download to check against"}

    def _encode(self, caption_set):
        """-> (image index, token ids with <bos>/<eos>) for every caption of every image."""
        return [(i, self.vocab.encode(tokenize(c), bos=True, eos=True))
                for i, captions in enumerate(caption_set.captions) for c in captions]

    # ---- Task interface ------------------------------------------------------------------------
    def build_model(self):
        return build_caption_model(self.config, self.feature_dim, len(self.vocab))

    def _size(self, split):
        return self.config["batch_size" if split == "train" else "eval_batch_size"]

    def batches(self, split, device):
        samples, features = self.data[split], self.features[split]
        for index in bucket_batches([len(t) for _, t in samples], self._size(split), shuffle=split == "train"):
            tokens, _ = pad_sequences([samples[i][1] for i in index], self.vocab.pad)
            images = torch.tensor([samples[i][0] for i in index])
            yield features[images].to(device), tokens.to(device)

    def num_batches(self, split):
        return -(-len(self.data[split]) // self._size(split))

    def logits(self, model, batch, state):
        features, tokens = batch
        targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == self.vocab.pad, IGNORE)
        return model(features, tokens[:, :-1]), targets, None

    def forward(self, model, batch, state):
        logits, targets, _ = self.logits(model, batch, state)
        nll, count = sequence_nll(logits, targets, IGNORE)
        # summed over caption tokens, averaged over captions (the LM and MT tasks' scaling)
        return StepOutput(loss=nll / targets.size(0), nll=nll.detach(), count=count, norm=targets.size(0))

    decodes = True

    def num_items(self, split):
        return len(self.features[split])

    def decode_items(self, model, split, device, items):
        models = model if isinstance(model, list) else [model]
        features = self.features[split][torch.as_tensor(list(items), dtype=torch.long)]
        return [" ".join(words) for words in describe(models, features, self.vocab, self.config, device)]

    def score_items(self, split, hyps, decode_s):
        caption_set = self.sets[split]
        scores, per_image = coco_caption_scores(hyps, caption_set.captions)
        names = [_relative(p, self.data_dir) for p in caption_set.images]
        picks = list(range(0, len(hyps), max(len(hyps) // EXAMPLES, 1)))[:EXAMPLES]
        examples = [{"index": i, "label": f"test image {i}", "image": str(Path(caption_set.images[i]).resolve()),
                     "source": names[i], "reference": caption_set.captions[i][0],
                     "references": caption_set.captions[i], "output": hyps[i]} for i in picks]
        return scores, {"decode": {k: self.config[k] for k in _DECODE}, "decode_s": round(decode_s, 2),
                        "decode_image_s": round(len(hyps) / decode_s, 1), "threads": torch.get_num_threads(),
                        "examples": examples, "items": per_image,
                        "outputs": [f"{name}\t{hyp}" for name, hyp in zip(names, hyps)]}

    @classmethod
    def figures(cls, runs, folder, label):
        """examples.png: six test images, a reference caption and each variant's caption (first seed)."""
        firsts = {k: details["examples"] for k, details in first_seed_details(runs, "examples").items()}
        if not firsts:
            return []
        path = Path(folder) / ("examples.png" if label == cls.default_preset else f"{label}-examples.png")
        return [path] if plot_examples(firsts, path, f"{cls.name} / {label}") else []

    def data_state(self):
        return {"vocab": self.vocab.state_dict(), "feature_dim": self.feature_dim}

    def load_data_state(self, state):
        self.vocab, self.feature_dim = Vocab.from_state_dict(state["vocab"]), state["feature_dim"]


def _relative(path, root):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


@torch.no_grad()
def describe(models, features, vocab, config, device, beam=None):
    """Beam-decode a caption (word list) for every image feature with one model or an ensemble (their
    probabilities averaged at every step); beam 1 is greedy."""
    beam = config["beam"] if beam is None else beam
    for model in models:
        model.eval()
    captions = []
    for start in range(0, len(features), config["decode_batch_size"]):
        batch = features[start: start + config["decode_batch_size"]].to(device)
        tokens, _ = beam_search([m.step for m in models], [m.start(batch) for m in models], len(batch), vocab.bos,
                                vocab.eos, beam, config["max_caption_len"], config["length_penalty"])
        captions += [vocab.decode(ids) for ids in tokens]
    return captions


def plot_examples(examples_by_variant, path, title):
    """Draw each example image with its first reference and every variant's caption; False when the images
    are not on this machine (the data folder is resolved as for training)."""
    import io
    import textwrap

    import matplotlib
    from PIL import Image

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.utils import atomic_write
    from tasks.caption.encoders import read_image

    base = next(iter(examples_by_variant.values()))
    # where the run read them, else the same names under this machine's data folder
    images = [Path(ex["image"]) if Path(ex["image"]).exists() else data_root() / ex["source"] for ex in base]
    if not all(p.exists() for p in images):
        print(f"{path.name} not drawn: the example images are not under {data_root()}")
        return False
    cols = 3
    rows = -(-len(base) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 6.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    wrap = lambda text: "\n".join(textwrap.wrap(text, 46))  # noqa: E731
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(read_image(image))
        lines = [f"reference: {wrap(base[i]['reference'])}"]
        lines += [f"{variant if p == 0 else f'{variant} p={p:g}'}: {wrap(examples[i]['output'])}"
                  for (variant, p), examples in examples_by_variant.items() if i < len(examples)]
        ax.text(0, -0.03, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=9.5)
    fig.suptitle(f"{title}: test images, a reference and each variant's beam-search caption", fontsize=12)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.08, wspace=0.06, hspace=0.42)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    # a 256-colour palette keeps the photos recognisable at a third of the size
    picture = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    atomic_write(path, lambda f: picture.save(f, format="PNG", optimize=True), mode="wb")
    return True


def build_caption_model(config, feature_dim, vocab_size):
    model = CaptionModel(feature_dim, vocab_size, config["emb"], config["hidden"], config["layers"], config["dropout"],
                         config.get("scheme", "zaremba"), config.get("zoneout_cell"))
    init_uniform(model, config["init"])
    return model
