"""The TIMIT-sample corpus (the default speech preset): loader, its errors, the region folds, labels."""
import json
import re

import pytest
import soundfile
import torch

from benchmarks import run
from benchmarks.jobs import runner
from core.download import DataError
from tasks.speech.data import IGNORE, TIMIT_39, TIMIT_61, TIMIT_FOLD, fold_timit
from tasks.speech.presets import PRESETS
from tasks.speech.task import SpeechTask, fold_speakers
from tasks.speech.timit_sample import REGIONS, region_folds, timit_sample_split
from tests.test_speech import tone

RATE = 16000
PHONES = "0 1600 h#\n1600 3200 ix\n3200 3600 q\n3600 5600 s\n5600 6400 tcl\n6400 8000 h#\n"  # 0.5 s


def write_speaker(folder, utterances=("sa1", "si1", "sx2"), phn=PHONES, seconds=0.5, rate=RATE):
    folder.mkdir(parents=True)
    for i, name in enumerate(utterances):
        wave = tone(i % 10, seconds=seconds - 0.1, rate=rate)  # tone() adds 2 x 0.05 s of quiet edges
        soundfile.write(folder / f"{name}.wav", wave.numpy(), rate, subtype="PCM_16")
        (folder / f"{name}.phn").write_text(phn)
    return folder


def write_tiny_timit_sample(root):
    """Two speakers per dialect region, SA1 and two other sentences each, in the NLTK layout."""
    for region in REGIONS:
        for sex in "fm":
            write_speaker(root / "timit-sample" / f"{region}-{sex}{region}x0")
    return root


@pytest.fixture
def tiny_sample(tmp_path):
    return write_tiny_timit_sample(tmp_path / "data")


def sample_task(data, cache, seed=1, **overrides):
    config = {**PRESETS["cpu"], "scheme": "none", "dropout": 0.0, "seed": seed, "hidden": 8, "epochs": 1, **overrides}
    return SpeechTask(config, data, download=False, custom_data=True, cache_dir=cache).load_data()


def test_every_timit_symbol_folds_into_the_39_classes():
    assert len(TIMIT_61) == 61 and set(TIMIT_FOLD) <= TIMIT_61
    assert {fold_timit(p) for p in TIMIT_61} == set(TIMIT_39) | {None}
    assert [p for p in TIMIT_61 if fold_timit(p) is None] == ["q"]
    for closure in ("bcl", "dcl", "gcl", "pcl", "tcl", "kcl", "h#", "pau", "epi"):
        assert fold_timit(closure) == "sil"


def test_region_folds_test_every_non_dev_region_once_and_never_the_dev_region():
    folds = [region_folds(seed, "dr1") for seed in range(1, 8)]
    assert sorted(r for f in folds for r in f["test"]) == list(REGIONS[1:])
    for fold in folds:
        assert "dr1" not in fold["test"] + fold["valid"] and "dr1" in fold["train"]
        assert sorted(fold["train"] + fold["valid"] + fold["test"]) == list(REGIONS)  # disjoint, complete
    assert region_folds(0, "dr1") == {"train": list(REGIONS[1:]), "valid": ["dr1"], "test": []}
    with pytest.raises(ValueError, match="seed s is the fold: 1..7"):
        region_folds(8, "dr1")


def test_splits_leave_sa_out_and_share_no_speaker(tiny_sample, tmp_path):
    task = sample_task(tiny_sample, tmp_path / "cache", seed=3)
    speakers = {s: set(task.data[s]["speakers"]) for s in ("train", "valid", "test")}
    assert speakers["test"] == {"fdr4x0", "mdr4x0"} and speakers["valid"] == {"fdr5x0", "mdr5x0"}
    assert len(speakers["train"]) == 12 and not speakers["train"] & (speakers["valid"] | speakers["test"])
    files = [f for s in ("train", "valid", "test") for fs in task.data[s]["files"] for f in fs]
    assert files and not [f for f in files if f.split("/")[1].startswith("sa")]
    assert task.data_info()["regions"]["test"] == ["dr4"]
    dev = sample_task(tiny_sample, tmp_path / "cache", seed=0)
    assert set(dev.data["valid"]["speakers"]) == {"fdr1x0", "mdr1x0"} and dev.data["test"]["feats"] == []


def test_frames_carry_the_folded_phones_and_q_is_not_scored(tiny_sample, tmp_path):
    labels = sample_task(tiny_sample, tmp_path / "cache").data["train"]["labels"][0]  # 160 samples per frame
    sil, ih, s = (TIMIT_39.index(p) for p in ("sil", "ih", "s"))
    assert labels[:10].tolist() == [sil] * 10 and labels[10:20].tolist() == [ih] * 10
    assert labels[20:23].tolist() == [IGNORE] * 3 and labels[23:35].tolist() == [s] * 12
    assert labels[35:].tolist() == [sil] * (len(labels) - 35)


def test_labels_ending_before_the_audio_leave_unscored_frames_counted(tmp_path):
    root = write_tiny_timit_sample(tmp_path / "data")
    short = "0 1600 h#\n1600 5000 s\n"  # ends 3000 samples (187.5 ms) before its 8000-sample audio
    (root / "timit-sample" / "dr4-fdr4x0" / "si1.phn").write_text(short)
    task = sample_task(root, tmp_path / "cache", seed=3)  # dr4 is fold 3's test region
    assert task.data_info()["unlabelled_frames"]["test"] == 19  # frames centred at samples 5040 ... 7920, 8000
    labels = task.data["test"]["labels"][0]
    assert (labels[-19:] == IGNORE).all() and (labels[-20] != IGNORE)


@pytest.mark.parametrize("name, phn, message", [
    ("gap", "0 1600 h#\n1700 8000 s\n", "a gap: the segment starts at sample 1700 but the previous one ends at 1600"),
    ("overlap", "0 1600 h#\n1500 8000 s\n", "an overlap: the segment starts at sample 1500"),
    ("unknown", "0 1600 h#\n1600 8000 xx\n", "unknown phone 'xx'"),
    ("past the end", "0 1600 h#\n1600 8400 s\n", r"400 samples \(25.00 ms\) past its end where at most 160 "
                                                   r"samples \(10 ms\) are allowed"),
    ("just past", "0 1600 h#\n1600 8161 s\n", r"161 samples \(10.06 ms\) past its end where at most 160 samples"),
])
def test_bad_label_files_are_one_clear_error_naming_the_file(tmp_path, name, phn, message):
    folder = write_speaker(tmp_path / "timit-sample" / "dr1-fx0", utterances=("si1",), phn=phn)
    with pytest.raises(DataError, match=message) as err:
        timit_sample_split(tmp_path / "timit-sample", ["dr1"])
    assert str(folder / "si1.phn") in str(err.value)


def test_a_label_file_within_10_ms_past_its_audio_is_accepted(tmp_path):
    write_speaker(tmp_path / "timit-sample" / "dr1-fx0", utterances=("si1",), phn="0 1600 h#\n1600 8150 s\n")
    (utt,) = timit_sample_split(tmp_path / "timit-sample", ["dr1"])
    assert utt["label_end"] == 8150 and len(utt["audio"]) == 8000


def test_unpaired_files_and_wrong_audio_are_clear_errors(tmp_path):
    folder = write_speaker(tmp_path / "timit-sample" / "dr1-fx0", utterances=("si1", "sx2"))
    (folder / "sx2.phn").unlink()
    with pytest.raises(DataError, match=r"sx2\.wav has no sx2\.phn beside it"):
        timit_sample_split(tmp_path / "timit-sample", ["dr1"])
    (folder / "sx2.wav").unlink()
    (folder / "si9.phn").write_text(PHONES)
    with pytest.raises(DataError, match=r"si9\.phn has no si9\.wav beside it"):
        timit_sample_split(tmp_path / "timit-sample", ["dr1"])
    (folder / "si9.phn").unlink()
    soundfile.write(folder / "si1.wav", torch.zeros(4000).numpy(), 8000, subtype="PCM_16")
    with pytest.raises(DataError, match=r"si1\.wav is 8000 Hz with 1 channel\(s\); the TIMIT sample is 16000 Hz mono"):
        timit_sample_split(tmp_path / "timit-sample", ["dr1"])
    soundfile.write(folder / "si1.wav", torch.zeros(8000, 2).numpy(), RATE, subtype="PCM_16")
    with pytest.raises(DataError, match="16000 Hz with 2 channel"):
        timit_sample_split(tmp_path / "timit-sample", ["dr1"])


def test_a_bad_file_caches_nothing(tiny_sample, tmp_path):
    (tiny_sample / "timit-sample" / "dr2-fdr2x0" / "si1.phn").write_text("0 1600 h#\n1700 8000 s\n")
    with pytest.raises(DataError, match="a gap"):
        sample_task(tiny_sample, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_missing_corpus_names_the_layout_and_the_download(tmp_path):
    config = {**PRESETS["cpu"], "scheme": "none", "seed": 1}
    with pytest.raises(DataError, match=r"TIMIT sample \(320 of 320 files missing.*timit-sample/dr<N>-<speaker>.*"
                                        r"nltk_data/gh-pages/packages/corpora/timit\.zip"):
        SpeechTask(config, tmp_path, download=False, cache_dir=tmp_path / "cache").load_data()


def test_non_canonical_copy_is_refused_without_custom_data(tiny_sample, tmp_path):
    from tasks.speech.timit_sample import checksums

    for name in checksums():  # every expected file present, none canonical
        path = tiny_sample / "timit-sample" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    config = {**PRESETS["cpu"], "scheme": "none", "seed": 1}
    with pytest.raises(DataError, match="failed the sha256 check.*--custom-data"):
        SpeechTask(config, tiny_sample, download=False, cache_dir=tmp_path / "cache").load_data()


def test_the_dev_fold_is_for_selection_runs_only(tiny_sample, tmp_path, capsys):
    args = ["--task", "speech", "--seeds", "0", "--data-dir", str(tiny_sample), "--out", str(tmp_path / "r"),
            "--run-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit):
        run.main(args)
    assert "seed 0 is the dev fold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--task", "speech", "--seeds", "9", "--out", str(tmp_path / "r")])
    assert "1..7 hold one region out for test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--task", "speech", "--ensemble", "2", "--out", str(tmp_path / "r")])
    assert "members would be tested on their own training speakers" in capsys.readouterr().err
    with pytest.raises(DataError, match="region_folds picks the regions"):
        fold_speakers({**PRESETS["cpu"], "seed": 1, "test_regions": "dr2"})


def test_the_default_speech_preset_is_the_timit_sample_on_seven_folds():
    args = runner.build_parser().parse_args(["--task", "speech"])
    runner.validate(args, runner.build_parser())
    assert args.preset == "cpu" and args.seeds == [1, 2, 3, 4, 5, 6, 7]
    assert PRESETS["cpu"]["corpus"] == "timit_sample" and PRESETS["fsdd"]["corpus"] == "fsdd"
    from benchmarks.select import main as select_main  # noqa: F401  (its default seed: the dev fold)
    from tasks.speech.task import SpeechTask as T
    assert T.selection_seed(PRESETS["cpu"]) == 0 and T.selection_seed(PRESETS["fsdd"]) == 1


def test_a_tiny_timit_sample_run_reports_speech_accuracy_and_the_confusion(tiny_sample, tmp_path):
    out = tmp_path / "results"
    run.main(["--task", "speech", "--variants", "none", "--seeds", "2", "--epochs", "1", "--set", "hidden=8",
              "--data-dir", str(tiny_sample), "--custom-data", "--no-download", "--cache-dir", str(tmp_path / "c"),
              "--out", str(out), "--run-dir", str(tmp_path / "runs"), "--no-progress"])
    (result,) = json.loads(next((out / "speech").glob("cpu*.json")).read_text())
    metrics, details = result["metrics"], result["details"]
    assert {"train_speech_acc", "valid_speech_acc", "test_speech_acc", "test_acc"} <= set(metrics)
    assert len(details["confusion"]) == 39 and len(details["per_class_acc"]) == 39
    confusion = torch.tensor(details["confusion"])
    sil = TIMIT_39.index("sil")
    speech = confusion.sum() - confusion[sil].sum()
    correct_speech = confusion.diagonal().sum() - confusion[sil, sil]
    assert metrics["test_speech_acc"] == pytest.approx(100.0 * float(correct_speech) / float(speech))
    assert metrics["test_acc"] == pytest.approx(100.0 * float(confusion.diagonal().sum()) / float(confusion.sum()))
    assert result["data"]["regions"]["test"] == ["dr3"]
    table = next((out / "speech").glob("cpu*.md")).read_text()  # its notes: this corpus only
    assert "TIMIT sample" in table and not {"FSDD", "ARCTIC", "speaker_folds"} & set(table.replace(",", " ").split())


def test_each_speech_presets_notes_describe_its_own_corpus_and_no_setting_a_run_can_override():
    notes, general = SpeechTask.preset_notes, SpeechTask.results_notes
    assert set(notes) == set(PRESETS)
    assert not re.search(r"FSDD|ARCTIC|TIMIT|speaker_folds", general)  # under every table, whatever its corpus
    assert "TIMIT sample" in notes["cpu"] and not re.search(r"FSDD|ARCTIC", notes["cpu"])
    assert "FSDD" in notes["fsdd"] and not re.search(r"TIMIT|ARCTIC|dr1", notes["fsdd"])
    assert "not chosen on dr1" in notes["paper"] and "made on it" not in notes["paper"]  # no selection run exists
    assert "fixed before any run" in notes["cpu"] and "model size" in notes["cpu"]
    for preset, note in notes.items():  # sizes, delays, epochs: the Config line of the table, not the note
        assert not re.search(r"\d+x\d+|\d+ epochs|\d+-frame|p ?= ?0\.\d", note), (preset, note)
