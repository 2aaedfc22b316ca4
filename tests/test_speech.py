import json
import math
import random

import pytest
import soundfile
import torch

from benchmarks import run
from benchmarks.jobs import runner
from core.download import DataError
from tasks.speech.task import PRESETS, SpeechTask, silence_confusion
from tasks.speech.data import (FSDD_SPEAKERS, IGNORE, SILENCE, TIMIT_39, TIMIT_61, LogMel, active_span,
                               arctic_split, build_fsdd_utterance, fold_timit, normalizer, plan_fsdd_utterances,
                               read_lab, timit_split)

RATE = 8000


def tone(digit, seconds=0.15, quiet=0.05, rate=RATE, seed=0):
    """A recording: quiet noise, a tone whose pitch encodes the digit, quiet noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    loud = 0.5 * torch.sin(2 * math.pi * (300 + 250 * digit) * t)
    edge = lambda: 1e-4 * torch.randn(int(quiet * rate), generator=g)  # noqa: E731
    return torch.cat([edge(), loud, edge()])


def write_tiny_fsdd(root, per_digit=2, speakers=FSDD_SPEAKERS):
    folder = root / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for s, speaker in enumerate(speakers):
        for digit in range(10):
            for index in range(per_digit):
                wave = tone(digit, seconds=0.12 + 0.02 * index, seed=s * 100 + digit * 10 + index)
                soundfile.write(folder / f"{digit}_{speaker}_{index}.wav", wave.numpy(), RATE, subtype="PCM_16")
    return root


@pytest.fixture
def tiny_fsdd(tmp_path):
    return write_tiny_fsdd(tmp_path / "data")


def tiny_task(data, cache, **overrides):
    config = {**PRESETS["tiny"], "scheme": "zaremba", "seed": 1, **overrides}
    return SpeechTask(config, data, download=False, custom_data=True, cache_dir=cache).load_data()


# ---- labelling --------------------------------------------------------------------------------------

def test_active_span_finds_the_quiet_edges():
    wave = tone(3, seconds=0.2, quiet=0.1)
    start, end = active_span(wave, hop=80, threshold_db=-30)
    assert abs(start - 800) <= 80 and abs(end - 2400) <= 80


def test_frame_labels_line_up_with_recordings_and_gaps():
    waves, digits = [tone(d, seed=d) for d in (4, 7, 1)], [4, 7, 1]
    audio, labels, spans = build_fsdd_utterance(waves, digits, random.Random(0), RATE, (0.1, 0.2), 30.0, 80, -30)
    logmel = LogMel(RATE, n_mels=20)
    feats, frames = logmel(audio), logmel.frame_labels(labels)
    assert len(frames) == len(feats) == len(audio) // 80 + 1
    assert [d for _, _, d in spans] == digits
    for start, end, digit in spans:  # every frame centred inside a recording's active part carries its digit
        inside = frames[(start + 79) // 80: end // 80]
        assert len(inside) > 5 and (inside == digit).all()
    gaps = [(0, spans[0][0])] + [(a[1], b[0]) for a, b in zip(spans, spans[1:])] + [(spans[-1][1], len(audio))]
    for start, end in gaps:
        assert (frames[(start + 79) // 80: end // 80] == SILENCE).all()
    assert set(frames.tolist()) == {4, 7, 1, SILENCE}
    assert audio[: spans[0][0]].abs().max() > 0  # the gaps carry background noise, not digital zeros


# ---- splits, normalisation, cache ---------------------------------------------------------------

def test_utterance_plan_is_deterministic_and_uses_each_recording_once():
    names = [f"{d}_jackson_{i}.wav" for d in range(10) for i in range(5)]
    plan = plan_fsdd_utterances(names, "jackson", seed=1)
    assert plan == plan_fsdd_utterances(list(reversed(names)), "jackson", seed=1)
    assert plan != plan_fsdd_utterances(names, "jackson", seed=2)
    assert sorted(n for group in plan for n in group) == sorted(names)
    assert all(3 <= len(g) <= 7 for g in plan[:-1]) and 1 <= len(plan[-1]) <= 7


def test_splits_are_speaker_disjoint_and_deterministic(tiny_fsdd, tmp_path):
    task = tiny_task(tiny_fsdd, tmp_path / "cache")
    speakers = {s: set(task.data[s]["speakers"]) for s in ("train", "valid", "test")}
    assert speakers == {s: set(PRESETS["tiny"][f"{s}_speakers"].split(",")) for s in speakers}
    again = tiny_task(tiny_fsdd, tmp_path / "other-cache")
    assert not again.cache_hit
    for split in ("train", "valid", "test"):
        assert again.data[split]["files"] == task.data[split]["files"]
        assert all(torch.equal(a, b) for a, b in zip(again.data[split]["feats"], task.data[split]["feats"]))


def test_normalisation_uses_training_statistics_only(tiny_fsdd, tmp_path):
    task = tiny_task(tiny_fsdd, tmp_path / "cache", cmn=False)
    train = torch.cat(task.data["train"]["feats"])
    assert torch.allclose(task.mean, train.mean(0)) and torch.allclose(task.std, train.std(0))
    everything = torch.cat([f for s in ("train", "valid", "test") for f in task.data[s]["feats"]])
    assert not torch.allclose(task.mean, everything.mean(0))
    normed = torch.cat(task.data["train"]["norm"])
    assert normed.mean(0).abs().max() < 1e-4 and (normed.std(0) - 1).abs().max() < 1e-3
    cmn = tiny_task(tiny_fsdd, tmp_path / "cache", cmn=True)  # per-utterance mean subtraction first
    assert all(f.mean(0).abs().max() < 1e-4 for f in cmn.data["test"]["feats"])
    assert torch.allclose(cmn.mean, torch.cat(cmn.data["train"]["feats"]).mean(0))
    mean, std = normalizer([torch.tensor([[1.0], [3.0]])])
    assert mean.item() == 2.0 and std.item() == pytest.approx(math.sqrt(2))


def test_feature_cache_is_reused_and_keyed_by_settings(tiny_fsdd, tmp_path):
    cache = tmp_path / "cache"
    assert not tiny_task(tiny_fsdd, cache).cache_hit
    assert tiny_task(tiny_fsdd, cache).cache_hit
    other = tiny_task(tiny_fsdd, cache, n_mels=6)
    assert not other.cache_hit and other.data["train"]["feats"][0].size(1) == 6
    assert tiny_task(tiny_fsdd, cache, deltas=True).data["train"]["feats"][0].size(1) == 24
    assert len(list(cache.glob("*.pt"))) == 3


# ---- errors ----------------------------------------------------------------------------------------

def test_corrupt_wav_names_the_file_and_caches_nothing(tiny_fsdd, tmp_path):
    bad = tiny_fsdd / "fsdd" / "recordings" / "3_lucas_1.wav"
    bad.write_bytes(b"RIFF\x00\x00not a wav at all")
    with pytest.raises(DataError, match="3_lucas_1.wav"):
        tiny_task(tiny_fsdd, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))


def test_missing_wav_and_non_canonical_copy_are_clear_errors(tiny_fsdd, tmp_path):
    config = {**PRESETS["tiny"], "scheme": "zaremba", "seed": 1}
    with pytest.raises(DataError, match="failed the sha256 check.*--custom-data"):
        SpeechTask(config, tiny_fsdd, download=False, cache_dir=tmp_path / "cache").load_data()
    (tiny_fsdd / "fsdd" / "recordings" / "0_theo_1.wav").unlink()
    with pytest.raises(DataError, match="0_theo_1.wav"):
        SpeechTask(config, tiny_fsdd, download=False, custom_data=True, cache_dir=tmp_path / "cache").load_data()
    with pytest.raises(DataError, match=r"recordings/<digit>_<speaker>_<index>.wav"):
        SpeechTask(config, tmp_path / "empty", download=False, cache_dir=tmp_path / "cache").load_data()


def test_missing_corpus_names_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match=r"timit/\{TRAIN,TEST\}"):
        timit_split(tmp_path, "train")
    with pytest.raises(DataError, match=r"cmu_us_<speaker>_arctic"):
        arctic_split(tmp_path, ["bdl"])


# ---- CMU ARCTIC and TIMIT ----------------------------------------------------------------------------

def write_arctic(root, speaker, utterances=2, rate=16000):
    folder = root / "arctic" / f"cmu_us_{speaker}_arctic"
    (folder / "wav").mkdir(parents=True)
    (folder / "lab").mkdir()
    for i in range(utterances):
        soundfile.write(folder / "wav" / f"arctic_a000{i}.wav", tone(i, rate=rate).numpy(), rate, subtype="PCM_16")
        (folder / "lab" / f"arctic_a000{i}.lab").write_text(
            "separator ;\nnfields 1\n#\n0.050000 125 pau\n0.120000 125 ax\n0.200000 125 pau\n0.250000 125 pau\n")
    return folder


def test_arctic_loader_reads_lab_end_times(tmp_path):
    folder = write_arctic(tmp_path, "bdl")
    assert read_lab(folder / "lab" / "arctic_a0000.lab", 16000) == [
        (0, 800, "pau"), (800, 1920, "ax"), (1920, 3200, "pau"), (3200, 4000, "pau")]
    utts = arctic_split(tmp_path, ["bdl"])
    assert len(utts) == 2 and utts[0]["rate"] == 16000 and utts[0]["speaker"] == "bdl"
    (folder / "lab" / "arctic_a0001.lab").unlink()
    with pytest.raises(DataError, match="arctic_a0001.wav has no label file"):
        arctic_split(tmp_path, ["bdl"])


def test_arctic_preset_labels_frames_with_training_phones(tmp_path):
    for speaker in ("bdl", "slt", "jmk"):
        write_arctic(tmp_path, speaker)
    config = {**PRESETS["arctic"], "train_speakers": "bdl", "valid_speakers": "slt", "test_speakers": "jmk",
              "scheme": "none", "seed": 1, "dropout": 0.0}
    task = SpeechTask(config, tmp_path, download=False, cache_dir=tmp_path / "cache").load_data()
    assert task.classes == ["ax", "pau"]
    labels = task.data["train"]["labels"][0]  # 16 kHz, 10 ms hop: 160 samples per frame
    assert labels[:5].tolist() == [1] * 5 and labels[6:12].tolist() == [0] * 6 and labels[13:20].tolist() == [1] * 7
    assert task.data["train"]["feats"][0].size(1) == 3 * PRESETS["arctic"]["n_mels"]  # with deltas


def test_timit_folding_61_to_39():
    assert len(TIMIT_61) == 61 and len(TIMIT_39) == 39
    folded = {fold_timit(p) for p in TIMIT_61}
    assert folded - {None} == set(TIMIT_39)
    assert fold_timit("ax-h") == "ah" and fold_timit("ZH") == "sh" and fold_timit("pcl") == "sil"
    assert fold_timit("h#") == "sil" and fold_timit("q") is None and fold_timit("iy") == "iy"
    with pytest.raises(ValueError, match="not a TIMIT phone"):
        fold_timit("xx")


def write_timit(root, part, region, speaker, utterances=("SI1", "SA1")):
    folder = root / "timit" / part / region / speaker
    folder.mkdir(parents=True)
    for name in utterances:
        soundfile.write(folder / f"{name}.WAV", tone(2, rate=16000).numpy(), 16000, format="NIST", subtype="PCM_16")
        (folder / f"{name}.PHN").write_text("0 800 h#\n800 1600 q\n1600 2400 ix\n2400 4000 pcl\n")


def test_timit_loader_splits_and_labels(tmp_path):
    write_timit(tmp_path, "TRAIN", "DR1", "FCJF0")
    write_timit(tmp_path, "TEST", "DR1", "MDAB0")  # core test speaker
    write_timit(tmp_path, "TEST", "DR2", "FAEM0")  # other test speaker: validation
    utts = {s: timit_split(tmp_path, s) for s in ("train", "valid", "test")}
    assert {s: [u["speaker"] for u in v] for s, v in utts.items()} == {
        "train": ["fcjf0"], "valid": ["faem0"], "test": ["mdab0"]}  # SA sentences left out
    assert utts["train"][0]["segments"][1] == (800, 1600, "q")
    config = {**PRESETS["timit"], "scheme": "none", "seed": 1, "dropout": 0.0}
    task = SpeechTask(config, tmp_path, download=False, cache_dir=tmp_path / "cache").load_data()
    labels = task.data["train"]["labels"][0]
    sil, ih = TIMIT_39.index("sil"), TIMIT_39.index("ih")
    assert labels[:5].tolist() == [sil] * 5 and labels[6:10].tolist() == [IGNORE] * 4
    assert labels[11:15].tolist() == [ih] * 4 and labels[16:25].tolist() == [sil] * 9


# ---- metrics and the end-to-end run ------------------------------------------------------------------

def test_frame_metrics_count_real_frames_only(tiny_fsdd, tmp_path):
    task = tiny_task(tiny_fsdd, tmp_path / "cache")
    model = task.build_model()
    feats, labels = next(iter(task.batches("valid", "cpu")))
    out = task.forward(model, (feats, labels), None)
    real = labels != IGNORE
    assert out.count == int(real.sum()) < labels.numel()  # padding counts for nothing
    metrics = task.metrics({"nll": float(out.nll), "count": out.count, "correct": float(out.extra["correct"])})
    assert 0 <= metrics["acc"] <= 100 and metrics["ce"] == pytest.approx(float(out.nll) / out.count)
    confusion = torch.tensor([[5, 1, 2], [0, 7, 1], [3, 0, 9]])
    assert silence_confusion(confusion, 2) == {"silence": {"silence": 9, "speech": 3},
                                               "speech": {"silence": 3, "speech": 13}}


def test_tiny_speech_run_end_to_end(tiny_fsdd, tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    run.main(["--task", "speech", "--preset", "tiny", "--data-dir", str(tiny_fsdd), "--custom-data",
              "--no-download", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--run-dir", str(runs),
              "--no-progress"])
    results = json.loads((out / "speech" / "tiny.json").read_text())
    assert [r["variant"] for r in results] == ["none", "zaremba"]
    for r in results:
        history = r["history"]
        assert {"train_acc", "train_running_acc", "valid_acc", "train_ce"} <= set(history[0])
        assert history[-1]["train_ce"] < history[0]["train_ce"]
        assert {"test_acc", "test_ce"} <= set(r["metrics"])
        assert len(r["details"]["confusion"]) == 11 and "silence_speech_confusion" in r["details"]
        assert r["data"]["canonical"] is False
    assert (out / "speech" / "tiny-frames.png").stat().st_size > 0
    table = (out / "speech" / "tiny.md").read_text()
    assert "train acc | valid acc | test acc | train speech_acc | valid speech_acc | test speech_acc | train ce" in table
    assert "eval mode" in table


def test_fsdd_downloads_the_pinned_release_and_verifies_it(tiny_fsdd, tmp_path, served, monkeypatch):
    import tarfile

    from core.download import sha256
    from tasks.speech import data as speech_data

    www, url = served
    recordings = sorted((tiny_fsdd / "fsdd" / "recordings").glob("*.wav"))
    with tarfile.open(www / "fsdd.tar.gz", "w:gz") as tar:
        for path in recordings:
            tar.add(path, arcname=f"free-spoken-digit-dataset-1.0.10/recordings/{path.name}")
        tar.add(recordings[0], arcname="free-spoken-digit-dataset-1.0.10/README.md")
    sums = {f"recordings/{p.name}": sha256(p) for p in recordings}
    monkeypatch.setattr(speech_data, "fsdd_checksums", lambda per_digit: sums)
    monkeypatch.setattr(speech_data, "FSDD_ARCHIVE", url + "fsdd.tar.gz")
    folder, noncanonical = speech_data.ensure_fsdd(tmp_path / "cache-root", per_digit=2)
    assert noncanonical == [] and sorted(p.name for p in (folder / "recordings").iterdir()) == [
        p.name for p in recordings]
    sums["recordings/0_george_0.wav"] = "0" * 64  # a corrupt download is never put in place
    (folder / "recordings" / "0_george_0.wav").unlink()
    with pytest.raises(DataError, match="0_george_0.wav"):
        speech_data.ensure_fsdd(tmp_path / "cache-root", per_digit=2)
    assert not (folder / "recordings" / "0_george_0.wav").exists()


def test_label_delay_scores_every_frame_once_and_predictions_line_up(tiny_fsdd, tmp_path):
    task = tiny_task(tiny_fsdd, tmp_path / "cache", label_delay=3)
    frames = sum(int((y != IGNORE).sum()) for y in task.data["valid"]["labels"])
    scored = sum(int((labels != IGNORE).sum()) for _, labels in task.batches("valid", "cpu"))
    assert scored == frames
    feats, labels = task._delayed(task.data["valid"]["norm"][0], task.data["valid"]["labels"][0])
    assert torch.equal(labels[3:], task.data["valid"]["labels"][0]) and (labels[:3] == IGNORE).all()
    assert feats[-3:].abs().sum() == 0 and len(feats) == len(labels)
    model = task.build_model().eval()
    predictions = task.predict(model, "valid", "cpu")
    with torch.no_grad():
        direct = model(feats[None])[0].argmax(-1)[3:]
    assert torch.equal(predictions[0], direct) and len(predictions[0]) == len(task.data["valid"]["labels"][0])


# ---- folds, overlapping speakers, unseen phones ------------------------------------------------------

def test_speaker_folds_hold_every_speaker_out_once(tiny_fsdd, tmp_path):
    from tasks.speech.task import fold_speakers

    base = {**PRESETS["fsdd"], "scheme": "none", "dropout": 0.0}
    folds = [fold_speakers({**base, "seed": seed}) for seed in range(1, 7)]
    assert sorted(f["test_speakers"] for f in folds) == sorted(FSDD_SPEAKERS)
    assert sorted(f["valid_speakers"] for f in folds) == sorted(FSDD_SPEAKERS)
    for f in folds:
        train = f["train_speakers"].split(",")
        assert len(train) == 4 and f["test_speakers"] not in train and f["valid_speakers"] not in train
    task = tiny_task(tiny_fsdd, tmp_path / "cache", speaker_folds=True, train_speakers="", valid_speakers="",
                     test_speakers="", seed=2)
    assert set(task.data["test"]["speakers"]) == {FSDD_SPEAKERS[1]}
    assert set(task.data["valid"]["speakers"]) == {FSDD_SPEAKERS[2]}
    assert task.data_info()["speakers"]["test"] == [FSDD_SPEAKERS[1]]


def test_a_held_out_speaker_in_training_is_an_error_naming_the_speaker(tiny_fsdd, tmp_path):
    with pytest.raises(DataError, match="'theo' is in both train_speakers and test_speakers"):
        tiny_task(tiny_fsdd, tmp_path / "cache", train_speakers="george,theo", test_speakers="theo")
    with pytest.raises(SystemExit):
        run.main(["--task", "speech", "--preset", "tiny", "--set", "valid_speakers=george", "--data-dir",
                  str(tiny_fsdd), "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs")])
    with pytest.raises(DataError, match="speaker_folds picks the speakers"):
        tiny_task(tiny_fsdd, tmp_path / "cache", speaker_folds=True)


def test_folds_refuse_an_ensemble(tiny_fsdd, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["--task", "speech", "--preset", "fsdd", "--ensemble", "2", "--data-dir", str(tiny_fsdd), "--out",
                  str(tmp_path / "r")])
    assert "members would be tested on their own training speakers" in capsys.readouterr().err


def test_held_out_phones_unseen_in_training_count_as_errors(tmp_path):
    from tasks.base import UNSEEN

    for speaker in ("bdl", "slt"):
        write_arctic(tmp_path, speaker)
    folder = write_arctic(tmp_path, "jmk")  # the test speaker says a phone ("zh") training never has
    for lab in (folder / "lab").glob("*.lab"):
        lab.write_text("separator ;\nnfields 1\n#\n0.050000 125 pau\n0.120000 125 zh\n0.250000 125 pau\n")
    config = {**PRESETS["arctic"], "train_speakers": "bdl", "valid_speakers": "slt", "test_speakers": "jmk",
              "scheme": "none", "seed": 1, "dropout": 0.0}
    task = SpeechTask(config, tmp_path, download=False, cache_dir=tmp_path / "cache").load_data()
    labels = task.data["test"]["labels"][0]
    unseen = int((labels == UNSEEN).sum())
    assert unseen >= 6 and "zh" not in task.classes
    model = task.build_model()
    batch = next(iter(task.batches("test", "cpu")))
    out = task.forward(model, batch, None)
    assert out.count == int((batch[1] != IGNORE).sum()) and out.extra["scored"] == out.count - 2 * unseen
    _, details = task.final_metrics(model, "test", "cpu")
    assert details["unseen_frames"] == 2 * unseen
    # an oracle that is right on every seen frame still loses the unseen ones
    correct = out.count - 2 * unseen
    assert task.metrics({"nll": 0.0, "count": out.count, "correct": correct, "scored": correct})["acc"] < 100


def test_the_fsdd_preset_trains_all_six_folds_by_default():
    args = runner.build_parser().parse_args(["--task", "speech", "--preset", "fsdd"])
    runner.validate(args, runner.build_parser())
    assert args.seeds == [1, 2, 3, 4, 5, 6]
    args = runner.build_parser().parse_args(["--task", "speech", "--preset", "tiny"])
    runner.validate(args, runner.build_parser())
    assert args.seeds == [1]
