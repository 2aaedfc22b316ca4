"""Frame-level acoustic modeling (paper section 4.2, Table 2): a unidirectional dropout-LSTM labels every
10 ms frame with its phone; frame accuracy on train (measured without dropout, as in the paper) and held-out
speakers.

The paper's Icelandic data is private; the default is the TIMIT sample NLTK distributes (real speech with
hand-verified phone alignments, folds by dialect region: tasks/speech/timit_sample.py). FSDD connected digits
(`fsdd`), CMU ARCTIC and full TIMIT presets serve the earlier table and users who have those corpora.
"""
import base64
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import DropoutLSTM, StepOutput, bucket_batches, init_uniform
from core.cache import cached, files_fingerprint
from tasks.base import UNSEEN, Task, first_seed_details, register
from tasks.speech.corpora import (  # noqa: F401 (fold_speakers: re-exported)
    CACHE_VERSION, DATA_KEYS, SPLITS, _speakers, corpus_folders, featurize, fold_speakers)
from tasks.speech.data import DIGIT_CLASSES, FSDD_SPEAKERS, IGNORE, TIMIT_39, ensure_fsdd, normalizer
from tasks.speech.presets import FSDD, PAPER_RESULTS, PRESET_NOTES, PRESETS, TIMIT_SAMPLE, TRAIN
from tasks.speech.timit_sample import REGIONS, ensure_timit_sample


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
    split_metrics = ("speech_acc", "ce")
    bounded_metrics = {"acc": (0, 100), "speech_acc": (0, 100)}
    eval_train = True
    results_notes = ("acc: frame accuracy in % (every 10 ms frame, silence included); speech_acc: the same over the "
                     "frames whose reference is not silence; ce: frame cross-entropy in nats. Held-out speakers never "
                     "occur in training (an overlap is an error). The corpus, its splits and which frames are scored "
                     "are in the note above the table; the JSON has the test confusion matrix, per-class accuracy and "
                     "the silence/speech confusion.")

    config_keys = (*FSDD, *TIMIT_SAMPLE, "speaker_folds", "train_regions", "valid_regions", "test_regions", *TRAIN,
                   "hidden", "layers")
    synthetic_frames = (150, 300)  # utterance lengths in frames (FSDD's connected digits: 1.5-3 s)

    def __init__(self, config, data_dir=None, download=True, custom_data=False, cache_dir=None):
        super().__init__(config, data_dir, download, custom_data, cache_dir)
        self.config = fold_speakers(self.config)

    def load_data(self):
        cfg, data_dir = self.config, self.data_dir
        if cfg["corpus"] == "fsdd":
            _, self.noncanonical = ensure_fsdd(data_dir, cfg["per_digit"], self.download, self.custom_data)
        elif cfg["corpus"] == "timit_sample":
            _, self.noncanonical = ensure_timit_sample(data_dir, self.download, self.custom_data)
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
        self.classes = list(TIMIT_39 if self.config["corpus"].startswith("timit") else DIGIT_CLASSES)
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
        if config.get("region_folds"):
            return list(range(1, len(REGIONS)))  # every test fold (seed 0 is the dev fold)
        return list(range(1, len(FSDD_SPEAKERS) + 1)) if config.get("speaker_folds") else None  # every fold

    @classmethod
    def selection_seed(cls, config):
        return 0 if config.get("region_folds") else 1

    @classmethod
    def selection_only(cls, config):
        if config.get("region_folds") and config.get("seed") == 0:
            return ("seed 0 is the dev fold (its validation set is the dev region; it has no test set): it is for "
                    "selection runs only. Add --valid-only (or use benchmarks.select), or give seeds 1-7 to test")
        return None

    @classmethod
    def check_config(cls, config, ensemble=None):
        super().check_config(config, ensemble)
        folds = next((k for k in ("speaker_folds", "region_folds") if config.get(k)), None)
        if folds and ensemble:
            raise ValueError(f"--ensemble with {folds}: each seed trains on other speakers, so members would be "
                             f"tested on their own training speakers; drop --ensemble or --set {folds}=false")
        fold_speakers(config)

    def data_info(self):
        info = {**super().data_info(), "speakers": {s: _speakers(self.config.get(f"{s}_speakers", "")) for s in SPLITS}}
        if self.config["corpus"] == "timit_sample":
            info["regions"] = {s: _speakers(self.config[f"{s}_regions"]) for s in SPLITS}
            info["speakers"] = {s: sorted(set(self.data[s]["speakers"])) for s in SPLITS}
            info["utterances"] = {s: len(self.data[s]["feats"]) for s in SPLITS}
            info["unlabelled_frames"] = {s: self.data[s].get("unlabelled_frames", 0) for s in SPLITS}
        return info

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
        hits = logits.argmax(-1) == labels
        speech = real & (labels != self.silence_id())
        return StepOutput(loss=nll / max(scored_count, 1), nll=nll.detach(), count=count, norm=scored_count,
                          extra={"correct": hits[real].sum(), "scored": scored_count,
                                 "speech_correct": hits[speech].sum(), "speech_count": int(speech.sum())})

    def silence_id(self):
        """The class id of silence ("sil", ARCTIC's "pau"), or -1 when the classes have none."""
        return next((i for i, c in enumerate(self.classes) if c in ("sil", "pau")), -1)

    def metrics(self, totals):
        metrics = {"acc": 100.0 * totals["correct"] / totals["count"],
                   "ce": totals["nll"] / max(totals.get("scored", totals["count"]), 1)}
        if totals.get("speech_count"):  # ensembles and MC passes score through core.scoring, without it
            metrics["speech_acc"] = 100.0 * totals["speech_correct"] / totals["speech_count"]
        return metrics

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
        if self.silence_id() >= 0:
            details["silence_speech_confusion"] = silence_confusion(confusion, self.silence_id())
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
