"""Bad input, every task: one error naming the file (or flag) and what is wrong, and nothing written half-way
(no cache entry, no results). The README's "Bad input" table lists these faults and the tests that cover them;
corrupt wav files and unreadable images are in tests/test_speech.py and tests/test_caption.py."""
import gzip
import json
import os

import pytest

from benchmarks import run
from conftest import write_tiny_ptb
from core.download import DataError
from tasks.base import load_checkpoint
from tasks.caption.data import load_coco_json, load_karpathy
from tasks.lm.task import LanguageModelTask
from tasks.mt.task import TranslationTask
from test_mt import tiny_config as mt_config, write_tiny_multi30k

LM = dict(LanguageModelTask.presets["tiny"], seed=1, scheme="zaremba")


def load_mt(root):
    return TranslationTask(mt_config(), root, download=False, custom_data=True).load_data()


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:len(data) // 2], "is corrupt (Compressed file ended before the end-of-stream marker"),
    (lambda data: b"plain text, not gzip", "is corrupt (Not a gzipped file"),
    (lambda data: gzip.compress(b""), "is empty: a split needs sentences"),
])
def test_a_damaged_multi30k_file_is_named(damage, message, tmp_path):
    root = write_tiny_multi30k(tmp_path / "data")
    bad = root / "multi30k" / "raw" / "val.fr.gz"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(DataError) as err:
        load_mt(root)
    assert str(bad) in str(err.value) and message in str(err.value)


def test_a_multi30k_pair_file_with_a_missing_line_names_both_counts(tmp_path):
    root = write_tiny_multi30k(tmp_path / "data")
    bad = root / "multi30k" / "tok" / "train.lc.norm.tok.en.gz"
    lines = gzip.decompress(bad.read_bytes()).decode().splitlines()
    bad.write_bytes(gzip.compress(("\n".join(lines[:-1]) + "\n").encode()))
    with pytest.raises(DataError, match=rf"not aligned.*{bad.name} has {len(lines) - 1} lines"):
        load_mt(root)


@pytest.mark.parametrize("content, message", [("", "is empty: a PTB split needs text"),
                                              (b"\xff\xfe bad bytes", "is corrupt (not UTF-8 text")])
def test_an_empty_or_corrupt_ptb_split_is_named(content, message, tmp_path):
    root = write_tiny_ptb(tmp_path / "data")
    bad = next(root.rglob("ptb.valid.txt"))
    bad.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(DataError) as err:
        LanguageModelTask(LM, root, download=False, custom_data=True).load_data()
    assert str(bad) in str(err.value) and message in str(err.value)


def test_caption_json_files_with_missing_fields_name_the_field(tmp_path):
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "id": 3}]}))
    with pytest.raises(DataError, match=r"captions_val2014.json is not a COCO captions file: an entry lacks the field "
                                        r"'caption'"):
        load_coco_json(coco, tmp_path)
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": [{"split": "train", "filename": "a.jpg"}]}))
    with pytest.raises(DataError, match="dataset_coco.json: image entry 0 lacks the field 'sentences'"):
        load_karpathy(karpathy, tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--set", "beam=0"], "beam must be >= 1, got 0"),
    (["--set", "lr=-1.0"], "lr must be > 0, got -1.0"),
    (["--set", "batch_size=0"], "batch_size must be >= 1, got 0"),
    (["--set", "max_vocab=0"], "--set max_vocab must be >= 1, got 0"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--set", "beam=wide"], "expected a int like 3"),
])
def test_out_of_range_or_mistyped_settings_stop_before_any_data_is_read(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(["--task", "mt", "--preset", "tiny", "--data-dir", str(tmp_path / "nothing-here"),
                  "--out", str(tmp_path / "out"), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out" / "mt").exists()


@pytest.mark.parametrize("task, missing, message", [
    ("mt", "sacremoses", "task mt needs the Python package sacremoses (detokenising translations before BLEU): "
                         "pip install sacremoses"),
    ("caption", "java", "task caption needs the program java on PATH"),
])
def test_a_missing_scorer_stops_before_training_not_after(task, missing, message, tmp_path, capsys, monkeypatch):
    import importlib.util
    import shutil

    find_spec, which = importlib.util.find_spec, shutil.which
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == missing else which(name, *a, **k))
    with pytest.raises(SystemExit) as exit_:
        run.main(["--task", task, "--preset", "tiny", "--data-dir", str(tmp_path / "nothing-here"),
                  "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_results_folder_that_cannot_be_written_stops_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        run.main(["--task", "lm", "--preset", "tiny", "--out", str(blocker / "results")])
    assert exit_.value.code == 2 and f"cannot write to {blocker / 'results'}" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_whose_mode_says_writable_but_whose_file_system_refuses_is_named_before_training(tmp_path, capsys):
    """/proc passes os.access even where nothing can be created in it: the check writes a real test file."""
    with pytest.raises(SystemExit) as exit_:
        run.main(["--task", "lm", "--preset", "tiny", "--out", "/proc/x", "--run-dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    assert "cannot write to /proc/x: a test file in /proc was refused" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_of_another_task_or_not_a_checkpoint_is_named(tmp_path):
    import torch

    other = tmp_path / "best.pt"
    torch.save({"model": {}, "task": "lm", "config": LM}, other)
    with pytest.raises(ValueError, match=f"{other} is a lm checkpoint, not mt"):
        load_checkpoint(other, task="mt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read checkpoint {junk}"):
        load_checkpoint(junk)


def test_ensemble_members_with_different_vocabularies_are_refused(tmp_path):
    import torch

    from tasks.base import load_members

    paths = []
    for seed in (0, 1):
        task = LanguageModelTask(LM, write_tiny_ptb(tmp_path / f"data{seed}", seed=seed), download=False,
                                 custom_data=True).load_data()
        paths.append(tmp_path / f"member{seed}.pt")
        torch.save({"model": task.build_model().state_dict(), "task": "lm", "config": LM,
                    "data_state": task.data_state()}, paths[-1])
    with pytest.raises(ValueError, match=f"ensemble members must share their vocabularies.*{paths[1]} differs"):
        load_members(paths, "cpu", "lm")
