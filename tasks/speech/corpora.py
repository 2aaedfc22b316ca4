"""The speech corpora as a task reads them: folds (speakers or dialect regions) filled into the config, the
utterances of each split with per-sample labels, and their log-mel features (what the feature cache stores)."""
from pathlib import Path

import torch
import torchaudio

from core.download import DataError
from tasks.base import UNSEEN
from tasks.speech.data import (DIGIT_CLASSES, FSDD_SPEAKERS, IGNORE, TIMIT_39, LogMel, arctic_split, fold_timit,
                               fsdd_split, label_samples, timit_split)
from tasks.speech.timit_sample import REGIONS, region_folds, timit_sample_split

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1  # bump when feature or label code changes, so old cache entries are not reused



def _speakers(text):
    return [s.strip() for s in text.split(",") if s.strip()]


def fold_speakers(cfg):
    """The config with its train/valid/test speakers (TIMIT sample: regions) filled in and checked.

    With `region_folds` (TIMIT sample), seed s is fold s of timit_sample.region_folds: seeds 1-7 test each
    non-dev region once, seed 0 is the dev fold (selection runs only).

    With `speaker_folds` (FSDD), seed s is fold s: test speaker = the ((s - 1) mod 6)-th FSDD speaker, validation
    speaker = the next one, training = the other four, so seeds 1-6 hold every speaker out once and a table's
    mean over seeds is a mean over folds. Any overlap between splits is an error naming the speaker."""
    cfg = dict(cfg)
    if cfg.get("region_folds"):
        _check_folds(cfg, "region_folds", "timit_sample", "regions")
        folds = region_folds(cfg["seed"], cfg.get("dev_region", "dr1"))
        cfg.update({f"{s}_regions": ",".join(folds[s]) for s in SPLITS})
    if cfg.get("speaker_folds"):
        _check_folds(cfg, "speaker_folds", "fsdd", "speakers")
        n = len(FSDD_SPEAKERS)
        fold = (cfg["seed"] - 1) % n
        test, valid = FSDD_SPEAKERS[fold], FSDD_SPEAKERS[(fold + 1) % n]
        cfg.update(test_speakers=test, valid_speakers=valid,
                   train_speakers=",".join(s for s in FSDD_SPEAKERS if s not in (test, valid)))
    unit = "regions" if cfg["corpus"] == "timit_sample" else "speakers"
    if cfg["corpus"] != "timit":  # TIMIT's own train/test split is speaker-disjoint
        seen = {}
        for split in SPLITS:
            for speaker in _speakers(cfg.get(f"{split}_{unit}", "")):
                if unit == "regions" and speaker not in REGIONS:
                    raise DataError(f"{split}_regions: {speaker!r} is not a dialect region; use {', '.join(REGIONS)}")
                if speaker in seen:
                    raise DataError(f"{unit[:-1]} {speaker!r} is in both {seen[speaker]}_{unit} and {split}_{unit}: "
                                    f"held-out {unit} must never occur in training or in the other held-out set; "
                                    f"fix the --set {unit[:-1]} lists")
                seen[speaker] = split
    return cfg


def _check_folds(cfg, flag, corpus, unit):
    """What speaker_folds and region_folds both need: their own corpus, and no split named by hand."""
    if cfg["corpus"] != corpus:
        raise DataError(f"{flag} works for corpus {corpus}, not {cfg['corpus']!r}; name the {unit} instead")
    named = [f"{s}_{unit}" for s in SPLITS if cfg.get(f"{s}_{unit}")]
    if named:
        raise DataError(f"{flag} picks the {unit} from the seed, but {', '.join(named)} are set too: "
                        f"unset them or pass --set {flag}=false")


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
    if cfg["corpus"] == "timit_sample":
        return [root / "timit-sample"]
    raise DataError(f"unknown corpus {cfg['corpus']!r}; use timit_sample, fsdd, arctic or timit")


def load_utterances(cfg, data_dir):
    """({split: utterances with "audio" at cfg's sample rate and per-sample "labels"}, class names)."""
    corpus = cfg["corpus"]
    if corpus == "fsdd":
        folder = Path(data_dir) / "fsdd"
        return {s: fsdd_split(folder, _speakers(cfg[f"{s}_speakers"]), cfg) for s in SPLITS}, DIGIT_CLASSES
    if corpus == "arctic":
        splits = {s: arctic_split(data_dir, _speakers(cfg[f"{s}_speakers"])) for s in SPLITS}
        classes = sorted({p for u in splits["train"] for _, _, p in u["segments"]})
    elif corpus == "timit_sample":
        folder = Path(data_dir) / "timit-sample"
        splits = {s: timit_sample_split(folder, _speakers(cfg[f"{s}_regions"])) for s in SPLITS}
        classes = TIMIT_39
    else:
        splits = {s: timit_split(data_dir, s) for s in SPLITS}
        classes = TIMIT_39
    index = {c: i for i, c in enumerate(classes)}
    fold = fold_timit if corpus.startswith("timit") else (lambda p: p)
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
                      "files": [u["files"] for u in utts],
                      # frames after a label file's end (it ended before its audio): not scored, counted here
                      "unlabelled_frames": sum(_frames_after(logmel, len(u["audio"]), u.get("label_end"))
                                               for u in utts)}
    return out


def _frames_after(logmel, n_samples, label_end):
    """How many frames take their label from at or after sample `label_end` (None: labelled to the end): the
    frames LogMel.frame_labels labels from the unlabelled tail."""
    if label_end is None:
        return 0
    tail = torch.arange(n_samples) >= label_end
    return int(logmel.frame_labels(tail).sum())


DATA_KEYS = ("corpus", "n_mels", "win_ms", "hop_ms", "deltas", "sample_rate", "train_speakers", "valid_speakers",
             "test_speakers", "train_regions", "valid_regions", "test_regions", "per_digit", "data_seed", "min_digits",
             "max_digits", "gap_min_s", "gap_max_s", "snr_db", "silence_db")
