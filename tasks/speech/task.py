"""Frame-level acoustic modeling (paper section 4.2, Table 2): a unidirectional dropout-LSTM labels every
10 ms frame; frame accuracy on train (measured without dropout, as in the paper) and held-out speakers.

The paper's Icelandic data is private; the default is connected digits built from the Free Spoken Digit
Dataset with speaker-disjoint splits (tasks/speech/data.py), and CMU ARCTIC and TIMIT presets serve users
who have those corpora.
"""
import base64
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from core import DropoutLSTM, StepOutput, bucket_batches, init_uniform
from core.cache import cached, files_fingerprint
from core.download import DataError
from tasks.base import UNSEEN, Task, first_seed_details, register
from tasks.speech.data import (DIGIT_CLASSES, FSDD_SPEAKERS, IGNORE, TIMIT_39, LogMel, arctic_split, ensure_fsdd, fold_timit,
                               fsdd_split, label_samples, normalizer, timit_split)

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1  # bump when feature or label code changes, so old cache entries are not reused
_FEATURES = dict(n_mels=40, win_ms=25, hop_ms=10, deltas=False)
_FSDD = dict(corpus="fsdd", **_FEATURES, sample_rate=8000, train_speakers="george,jackson,lucas,yweweler",
             valid_speakers="nicolas", test_speakers="theo", per_digit=50, data_seed=1, min_digits=3, max_digits=7,
             gap_min_s=0.05, gap_max_s=0.3, snr_db=30.0, silence_db=-30.0)
_TRAIN = dict(cmn=True, label_delay=0, init=0.1, batch_size=16, eval_batch_size=64, optimizer="adam", lr=0.002,
              decay_start=10, lr_decay=1.5, clip=5.0)
PRESETS = {
    # Scaled down for a 2-core CPU; size and p chosen by measurement (see the README).
    # Seed s holds FSDD speaker s out for test (the next one for validation): seeds 1-6 are the six folds.
    # The 10-frame output delay and p were chosen on fold 1's validation speaker (see the README).
    "cpu": dict(_FSDD, speaker_folds=True, train_speakers="", valid_speakers="", test_speakers="",
                **{**_TRAIN, "label_delay": 10}, hidden=256, layers=2, dropout=0.3, epochs=20,
                # chosen on fold 1's validation speaker (README, "Dropout schemes"); zoneout: [hiddens, cells]
                scheme_dropout={"variational": 0.1, "weightdrop": 0.3, "zoneout": [0.05, 0.5]}),
    # The paper does not state its acoustic model's size; 4 layers (as in its other deep LSTMs) of 1000 units
    # with p=0.5, on the same connected digits. For a GPU.
    "paper": dict(_FSDD, **_TRAIN, hidden=1000, layers=4, dropout=0.5, epochs=30),
    # Corpora for users who have them (phone classes; 16 kHz, features with deltas).
    "arctic": dict(_FEATURES, corpus="arctic", sample_rate=16000, deltas=True, train_speakers="bdl,clb,rms,slt",
                   valid_speakers="jmk", test_speakers="awb", **_TRAIN, hidden=512, layers=2, dropout=0.5, epochs=20),
    "timit": dict(_FEATURES, corpus="timit", sample_rate=16000, deltas=True, **_TRAIN, hidden=512, layers=2,
                  dropout=0.5, epochs=20),
    # Seconds on a few recordings; a smoke test of the machinery, not a result.
    "tiny": dict(_FSDD, cmn=True, label_delay=2, init=0.1, batch_size=4, eval_batch_size=8, optimizer="adam",
                 lr=0.01, decay_start=1, lr_decay=2.0, clip=5.0, per_digit=2, n_mels=8, hidden=16, layers=2,
                 dropout=0.3, epochs=2),
}
PRESET_NOTES = {
    "cpu": "Scaled down for a 2-core CPU (FSDD connected digits, six speaker folds, 2x256, p=0.3, 10-frame output "
           "delay, Adam, 20 epochs): not the paper's data or configuration.",
    "paper": "The paper's data is private and its network size is not stated: a larger network on the same "
             "connected digits, not a reproduction of Table 2's setting.",
    "tiny": "Smoke-test preset (seconds on a few recordings): not a result.",
}
_TABLE2 = {"none": {"train_acc": 71.6, "valid_acc": 68.9}, "zaremba": {"train_acc": 69.4, "valid_acc": 70.5}}
# Table 2 of the paper (frame accuracy on an Icelandic speech corpus, train / validation). Beside the FSDD
# presets for the direction and size of the effect only: different data, labels and model.
PAPER_RESULTS = {"cpu": _TABLE2, "paper": _TABLE2}


class FrameClassifier(nn.Module):
    """Features -> unidirectional dropout-LSTM -> linear layer over the frame classes."""

    def __init__(self, n_features, n_classes, hidden, layers, dropout=0.0, scheme="zaremba", zoneout_cell=None):
        super().__init__()
        self.rnn = DropoutLSTM(n_features, hidden, layers, dropout, scheme, zoneout_cell=zoneout_cell)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, feats):
        # Padding sits after each utterance's end and a unidirectional LSTM never looks ahead, so the real
        # frames' outputs do not depend on it; the loss ignores the padded frames.
        output, _ = self.rnn(feats)
        return self.out(output)


def _speakers(text):
    return [s.strip() for s in text.split(",") if s.strip()]


def fold_speakers(cfg):
    """The config with its train/valid/test speakers filled in and checked.

    With `speaker_folds` (FSDD), seed s is fold s: test speaker = the ((s - 1) mod 6)-th FSDD speaker, validation
    speaker = the next one, training = the other four, so seeds 1-6 hold every speaker out once and a table's
    mean over seeds is a mean over folds. Any overlap between splits is an error naming the speaker."""
    cfg = dict(cfg)
    if cfg.get("speaker_folds"):
        if cfg["corpus"] != "fsdd":
            raise DataError(f"speaker_folds works for corpus fsdd, not {cfg['corpus']!r}; name the speakers instead")
        named = [f"{s}_speakers" for s in SPLITS if cfg.get(f"{s}_speakers")]
        if named:
            raise DataError(f"speaker_folds picks the speakers from the seed, but {', '.join(named)} are set too: "
                            "unset them or pass --set speaker_folds=false")
        n = len(FSDD_SPEAKERS)
        fold = (cfg["seed"] - 1) % n
        test, valid = FSDD_SPEAKERS[fold], FSDD_SPEAKERS[(fold + 1) % n]
        cfg.update(test_speakers=test, valid_speakers=valid,
                   train_speakers=",".join(s for s in FSDD_SPEAKERS if s not in (test, valid)))
    if cfg["corpus"] != "timit":  # TIMIT's own train/test split is speaker-disjoint
        seen = {}
        for split in SPLITS:
            for speaker in _speakers(cfg[f"{split}_speakers"]):
                if speaker in seen:
                    raise DataError(f"speaker {speaker!r} is in both {seen[speaker]}_speakers and {split}_speakers: "
                                    "held-out speakers must never occur in training or in the other held-out set; "
                                    "fix the --set speaker lists")
                seen[speaker] = split
    return cfg


def corpus_folders(cfg, data_dir):
    """The folders whose files a preset reads (their identity is part of the feature cache key)."""
    root = Path(data_dir)
    if cfg["corpus"] == "fsdd":
        return [root / "fsdd" / "recordings"]
    if cfg["corpus"] == "arctic":
        speakers = [s for split in SPLITS for s in _speakers(cfg[f"{split}_speakers"])]
        return [root / "arctic" / f"cmu_us_{s}_arctic" for s in speakers]
    if cfg["corpus"] == "timit":
        return [root / "timit"]
    raise DataError(f"unknown corpus {cfg['corpus']!r}; use fsdd, arctic or timit")


def load_utterances(cfg, data_dir):
    """({split: utterances with "audio" at cfg's sample rate and per-sample "labels"}, class names)."""
    corpus = cfg["corpus"]
    if corpus == "fsdd":
        folder = Path(data_dir) / "fsdd"
        return {s: fsdd_split(folder, _speakers(cfg[f"{s}_speakers"]), cfg) for s in SPLITS}, DIGIT_CLASSES
    if corpus == "arctic":
        splits = {s: arctic_split(data_dir, _speakers(cfg[f"{s}_speakers"])) for s in SPLITS}
        classes = sorted({p for u in splits["train"] for _, _, p in u["segments"]})
    else:
        splits = {s: timit_split(data_dir, s) for s in SPLITS}
        classes = TIMIT_39
    index = {c: i for i, c in enumerate(classes)}
    fold = fold_timit if corpus == "timit" else (lambda p: p)
    for utts in splits.values():
        for u in utts:
            scale = cfg["sample_rate"] / u["rate"]
            segments = [(int(a * scale), int(b * scale), p) for a, b, p in u["segments"]]
            if u["rate"] != cfg["sample_rate"]:
                u["audio"] = torchaudio.functional.resample(u["audio"], u["rate"], cfg["sample_rate"])
            # a held-out phone never seen in training (ARCTIC) is a frame the model cannot get right: UNSEEN
            u["labels"] = label_samples(len(u["audio"]), segments, lambda p: _class_id(index, fold(p)))
    return splits, classes


def _class_id(index, phone):
    return IGNORE if phone is None else index.get(phone, UNSEEN)  # None: deleted by the folding (TIMIT's q)


def featurize(cfg, data_dir):
    """{"classes", split: {"feats": [(T, D)], "labels": [(T,)], "speakers", "files"}}, features unnormalised."""
    splits, classes = load_utterances(cfg, data_dir)
    logmel = LogMel(cfg["sample_rate"], cfg["n_mels"], cfg["win_ms"], cfg["hop_ms"], cfg["deltas"])
    out = {"classes": classes}
    for split, utts in splits.items():
        feats = [logmel(u["audio"]) for u in utts]
        labels = [logmel.frame_labels(u["labels"]) for u in utts]
        out[split] = {"feats": feats, "labels": labels, "speakers": [u["speaker"] for u in utts],
                      "files": [u["files"] for u in utts]}
    return out


DATA_KEYS = ("corpus", "n_mels", "win_ms", "hop_ms", "deltas", "sample_rate", "train_speakers", "valid_speakers",
             "test_speakers", "per_digit", "data_seed", "min_digits", "max_digits", "gap_min_s", "gap_max_s",
             "snr_db", "silence_db")


@register
class SpeechTask(Task):
    name = "speech"
    description = "Frame-level acoustic modeling with a unidirectional LSTM (frame accuracy)"
    presets = PRESETS
    preset_notes = PRESET_NOTES
    paper_results = PAPER_RESULTS
    paper_source = "Table 2 (Icelandic speech, frame accuracy)"
    main_metric = "acc"
    lower_is_better = False
    split_metrics = ("ce",)
    eval_train = True
    results_notes = ("acc: frame accuracy in % (every 10 ms frame, silence included); ce: frame cross-entropy in "
                     "nats. Held-out speakers never occur in training (an overlap is an error); with speaker_folds "
                     "(the cpu preset) seed s holds FSDD speaker s out for test and the next one for validation, so "
                     "the mean over seeds 1-6 is the mean over six folds, each speaker tested once. A held-out "
                     "label never seen in training (ARCTIC phones) counts as an error in the accuracy and is left "
                     "out of the cross-entropy; the JSON counts such frames (unseen_frames) and has the test "
                     "confusion matrix, per-class accuracy and the silence/speech confusion.")

    config_keys = (*_FSDD, "speaker_folds", *_TRAIN, "hidden", "layers")
    synthetic_frames = (150, 300)  # utterance lengths in frames (FSDD's connected digits: 1.5-3 s)

    def __init__(self, config, data_dir=None, download=True, custom_data=False, cache_dir=None):
        super().__init__(config, data_dir, download, custom_data, cache_dir)
        self.config = fold_speakers(self.config)

    def load_data(self):
        cfg, data_dir = self.config, self.data_dir
        if cfg["corpus"] == "fsdd":
            _, self.noncanonical = ensure_fsdd(data_dir, cfg["per_digit"], self.download, self.custom_data)
        folders = corpus_folders(cfg, data_dir)
        files = sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file())
        key = {"version": CACHE_VERSION, "data": {k: cfg.get(k) for k in DATA_KEYS}, "files": files_fingerprint(files)}
        self.data, self.cache_hit = cached(self.cache_dir, f"speech-{cfg['corpus']}", key,
                                           lambda: featurize(cfg, data_dir))
        self.classes = self.data["classes"]
        if cfg.get("cmn"):  # per-utterance mean subtraction removes each recording's channel (microphone)
            for split in SPLITS:
                self.data[split]["feats"] = [f - f.mean(dim=0) for f in self.data[split]["feats"]]
        self.mean, self.std = normalizer(self.data["train"]["feats"])
        self._normalize()
        return self

    def synthetic_data(self, batches=20, seed=0):
        generator = torch.Generator().manual_seed(seed)
        dims = self.config["n_mels"] * (3 if self.config["deltas"] else 1)
        self.classes = list(DIGIT_CLASSES)
        lengths = torch.randint(*self.synthetic_frames, (batches * self.config["batch_size"],), generator=generator)
        split = {"feats": [torch.randn(int(n), dims, generator=generator) for n in lengths],
                 "labels": [torch.randint(len(self.classes), (int(n),), generator=generator) for n in lengths]}
        self.data = {s: split for s in SPLITS}
        self.mean, self.std = normalizer(split["feats"])
        self._normalize()

    def _normalize(self):
        for split in SPLITS:
            self.data[split]["norm"] = [(f - self.mean) / self.std for f in self.data[split]["feats"]]

    @classmethod
    def default_seeds(cls, config):
        return list(range(1, len(FSDD_SPEAKERS) + 1)) if config.get("speaker_folds") else None  # every fold

    @classmethod
    def check_config(cls, config, ensemble=None):
        super().check_config(config, ensemble)
        if config.get("speaker_folds") and ensemble:
            raise ValueError("--ensemble with speaker_folds: each seed trains on other speakers, so members would be "
                             "tested on their own training speakers; drop --ensemble or --set speaker_folds=false")
        fold_speakers(config)

    def data_info(self):
        return {**super().data_info(), "speakers": {s: _speakers(self.config[f"{s}_speakers"]) for s in SPLITS}}

    def build_model(self):
        cfg = self.config
        model = FrameClassifier(self.mean.size(-1), len(self.classes), cfg["hidden"],
                                cfg["layers"], cfg["dropout"], cfg.get("scheme", "zaremba"), cfg.get("zoneout_cell"))
        init_uniform(model, cfg["init"])
        return model

    def batches(self, split, device):
        data = self.data[split]
        size = self.config["batch_size" if split == "train" else "eval_batch_size"]
        for index in bucket_batches([len(f) for f in data["norm"]], size, shuffle=split == "train"):
            pairs = [self._delayed(data["norm"][i], data["labels"][i]) for i in index]
            feats = nn.utils.rnn.pad_sequence([f for f, _ in pairs], batch_first=True)
            labels = nn.utils.rnn.pad_sequence([y for _, y in pairs], batch_first=True, padding_value=IGNORE)
            yield feats.to(device), labels.to(device)

    def _delayed(self, feats, labels):
        """Output delay (Sak et al., 2014): the label of frame t is asked for at step t + label_delay, so the
        unidirectional LSTM hears a little of what follows. The input gets that many frames of zeros (the
        training mean) at the end; every real frame is scored exactly once."""
        delay = self.config.get("label_delay", 0)
        if not delay:
            return feats, labels
        return (torch.cat([feats, feats.new_zeros(delay, feats.size(1))]),
                torch.cat([labels.new_full((delay,), IGNORE), labels]))

    def num_batches(self, split):
        size = self.config["batch_size" if split == "train" else "eval_batch_size"]
        return -(-len(self.data[split]["norm"]) // size)

    def logits(self, model, batch, state):
        feats, labels = batch
        return model(feats), labels, None

    def forward(self, model, batch, state):
        logits, labels, _ = self.logits(model, batch, state)
        real, scored = labels != IGNORE, labels >= 0  # UNSEEN frames: in the accuracy (always wrong), no loss
        nll = F.cross_entropy(logits.float().flatten(0, 1), labels.masked_fill(~scored, IGNORE).flatten(), ignore_index=IGNORE,
                              reduction="sum")
        count, scored_count = int(real.sum()), int(scored.sum())
        correct = (logits.argmax(-1) == labels)[real].sum()
        return StepOutput(loss=nll / max(scored_count, 1), nll=nll.detach(), count=count, norm=scored_count,
                          extra={"correct": correct, "scored": scored_count})

    def metrics(self, totals):
        return {"acc": 100.0 * totals["correct"] / totals["count"],
                "ce": totals["nll"] / max(totals.get("scored", totals["count"]), 1)}

    @torch.no_grad()
    def predict(self, model, split, device):
        """Per-utterance predicted class ids, in the split's order; `model` may be a list (an ensemble: the
        members' frame posteriors are averaged)."""
        models = model if isinstance(model, list) else [model]
        for m in models:
            m.eval()
        data = self.data[split]
        delay = self.config.get("label_delay", 0)
        predictions = []
        for feats, labels in zip(data["norm"], data["labels"]):
            x = self._delayed(feats, labels)[0][None].to(device)
            probs = torch.stack([F.softmax(m(x)[0, delay:], dim=-1) for m in models]).mean(0)
            predictions.append(probs.argmax(-1).cpu())
        return predictions

    def final_metrics(self, model, split, device):
        predictions = self.predict(model, split, device)
        labels = self.data[split]["labels"]
        n = len(self.classes)
        confusion = torch.zeros(n, n, dtype=torch.long)
        unseen = 0
        for ref, hyp in zip(labels, predictions):
            seen = ref >= 0
            unseen += int((ref == UNSEEN).sum())
            confusion.view(-1).index_add_(0, ref[seen] * n + hyp[seen], torch.ones(int(seen.sum()), dtype=torch.long))
        per_class = {c: round(100.0 * int(confusion[i, i]) / max(int(confusion[i].sum()), 1), 2)
                     for i, c in enumerate(self.classes)}
        details = {"classes": self.classes, "confusion": confusion.tolist(), "per_class_acc": per_class,
                   "unseen_frames": unseen,  # labels never seen in training: counted as errors in the accuracy
                   "frames": self._example(predictions, split)}
        silence = next((i for i, c in enumerate(self.classes) if c in ("sil", "pau")), None)
        if silence is not None:
            details["silence_speech_confusion"] = silence_confusion(confusion, silence)
        return {}, details

    def _example(self, predictions, split):
        """One utterance for results/speech/frames.png: its features (8-bit), reference and prediction."""
        data = self.data[split]
        lengths = [len(f) for f in data["feats"]]
        i = sorted(range(len(lengths)), key=lambda k: lengths[k])[len(lengths) // 2]  # the median-length one
        feats = data["feats"][i]
        lo, hi = float(feats.min()), float(feats.max())
        image = ((feats - lo) / max(hi - lo, 1e-9) * 255).round().to(torch.uint8)
        return {"index": i, "speaker": data["speakers"][i], "files": data["files"][i], "hop_ms": self.config["hop_ms"],
                "shape": list(image.shape), "features_u8": base64.b64encode(image.numpy().tobytes()).decode(),
                "reference": data["labels"][i].tolist(), "prediction": predictions[i].tolist()}

    @classmethod
    def figures(cls, runs, folder, label):
        """frames.png: one test utterance's features, its reference frame labels and each variant's
        predictions (the first seed of each variant)."""
        firsts = first_seed_details(runs, "frames")
        if not firsts:
            return []
        path = Path(folder) / ("frames.png" if label == cls.default_preset else f"{label}-frames.png")
        from tasks.speech.figures import plot_frames

        plot_frames(next(iter(firsts.values())), firsts, path, f"{cls.name} / {label}")
        return [path]

    def data_state(self):
        return {"classes": self.classes, "mean": self.mean, "std": self.std}

    def load_data_state(self, state):
        self.classes, self.mean, self.std = state["classes"], state["mean"], state["std"]


def silence_confusion(confusion, silence):
    """2x2 {reference: {predicted: frames}} between silence and speech (any non-silence class)."""
    speech = [i for i in range(len(confusion)) if i != silence]
    sil_row, speech_rows = confusion[silence], confusion[speech]
    return {"silence": {"silence": int(sil_row[silence]), "speech": int(sil_row[speech].sum())},
            "speech": {"silence": int(speech_rows[:, silence].sum()), "speech": int(speech_rows[:, speech].sum())}}
