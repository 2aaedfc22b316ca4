"""The captioning task: data plumbing, masked per-token perplexity, ensembles, other corpora, an end-to-end run."""
import json
import math

import pytest
import torch

from benchmarks import run
from core import Trainer
from core.download import DataError
from tasks.caption.task import PRESETS, CaptionTask, describe
from tasks.caption.data import load_caption_splits, load_hub_captions
from tests.test_captions_data import write_flickr8k, write_image

pytestmark = pytest.mark.filterwarnings("ignore:Flickr8k. skipping")


def tiny_task(root, cache, **overrides):
    config = {**PRESETS["tiny"], "scheme": "zaremba", "seed": 1, **overrides}
    return CaptionTask(config, root, cache_dir=cache).load_data()


@pytest.fixture
def flickr(tmp_path):
    return write_flickr8k(tmp_path / "data")


def test_every_caption_is_a_sample_and_batches_pair_it_with_its_image(flickr, tmp_path):
    task = tiny_task(flickr, tmp_path / "cache")
    assert [len(task.data[s]) for s in ("train", "valid", "test")] == [20, 10, 10]
    assert task.features["train"].shape == (4, 16) and not task.cache_hit
    valid = task.sets["valid"]
    assert task.data["valid"][6] == (1, task.vocab.encode(valid.captions[1][1].lower().replace(",", "").split()[:-1],
                                                          bos=True, eos=True))
    rows = 0
    for features, tokens in task.batches("valid", "cpu"):
        assert tokens[:, 0].eq(task.vocab.bos).all()
        for row_feats, row in zip(features, tokens):
            image = [j for j in range(len(valid)) if torch.equal(row_feats, task.features["valid"][j])]
            ids = row[row != task.vocab.pad].tolist()
            assert image and (image[0], ids) in task.data["valid"]
            rows += 1
    assert rows == 10
    assert tiny_task(flickr, tmp_path / "cache").cache_hit
    assert not tiny_task(flickr, tmp_path / "cache", feature_dim=8).cache_hit  # another encoder: rebuilt


def test_max_images_keeps_the_first_images_of_each_split(flickr, tmp_path):
    """The tiny preset's cut (seconds on the real Flickr8k too): the first images of each split, all their captions."""
    whole = tiny_task(flickr, tmp_path / "cache", max_images=None)
    task = tiny_task(flickr, tmp_path / "cache", max_images=3)
    assert [len(task.sets[s]) for s in ("train", "valid", "test")] == [3, 2, 2]
    assert task.sets["train"].images == whole.sets["train"].images[:3] and len(task.data["train"]) == 15
    assert task.features["train"].shape == (3, 16)


def test_loss_counts_words_and_eos_but_not_padding_nor_the_image_step(flickr, tmp_path):
    task = tiny_task(flickr, tmp_path / "cache")
    model = task.build_model().eval()
    features, tokens = next(iter(task.batches("test", "cpu")))
    logits, targets, _ = task.logits(model, (features, tokens), None)
    assert logits.shape[:2] == targets.shape == (tokens.size(0), tokens.size(1) - 1)
    assert int((targets != -100).sum()) == int((tokens != task.vocab.pad).sum()) - tokens.size(0)  # all but <bos>
    out = task.forward(model, (features, tokens), None)
    assert out.count == int((targets != -100).sum())


def test_an_ensemble_of_identical_members_equals_one_member(flickr, tmp_path):
    task = tiny_task(flickr, tmp_path / "cache")
    torch.manual_seed(0)
    model = task.build_model()
    Trainer(task, model, _train_config(), tmp_path / "run", "cpu", progress=False).fit()
    one = task.ensemble_metrics([model], "test", "cpu")
    two = task.ensemble_metrics([model, model], "test", "cpu")
    assert two["ppl"] == pytest.approx(one["ppl"], rel=1e-5)
    single = describe([model], task.features["test"], task.vocab, task.config, "cpu")
    assert describe([model, model], task.features["test"], task.vocab, task.config, "cpu") == single
    assert describe([model], task.features["test"], task.vocab, task.config, "cpu", beam=1)  # greedy runs too
    other = task.build_model()
    mixed = task.ensemble_metrics([model, other], "test", "cpu")
    assert mixed["ppl"] != pytest.approx(one["ppl"], rel=1e-3)


def _train_config():
    from core import TrainConfig

    return TrainConfig.from_dict(PRESETS["tiny"], epochs=1)


def test_missing_coco_and_karpathy_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"MSCOCO is not in .*captions_train2014.json.*cocodataset.org"):
        load_caption_splits({**PRESETS["paper"], "corpus": "coco"}, tmp_path, tmp_path / "cache")
    with pytest.raises(DataError, match="no Karpathy split file .*dataset_coco.json"):
        load_caption_splits(PRESETS["paper"], tmp_path, tmp_path / "cache")
    with pytest.raises(DataError, match="unknown caption corpus 'flickr30'"):
        load_caption_splits({"corpus": "flickr30"}, tmp_path, tmp_path / "cache")


def test_coco_layout_cuts_valid_and_test_from_val2014(tmp_path):
    folder = tmp_path / "coco"
    for split, count in (("train", 2), ("val", 5)):
        images = [{"id": i, "file_name": f"{split}{i}.jpg"} for i in range(count)]
        anns = [{"image_id": i, "id": 10 * i + k, "caption": f"{split} {i} cap {k}"} for i in range(count)
                for k in range(2)]
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"captions_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns}))
    splits = load_caption_splits({"corpus": "coco", "coco_valid_size": 2, "coco_test_size": 3}, tmp_path, None)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [2, 2, 3]
    assert splits["test"].images[0] == folder / "val2014" / "val2.jpg"
    assert splits["train"].captions[1] == ["train 1 cap 0", "train 1 cap 1"]
    with pytest.raises(DataError, match="valid \\+ test need 9"):
        load_caption_splits({"corpus": "coco", "coco_valid_size": 4, "coco_test_size": 5}, tmp_path, None)


def test_datasets_library_loader_on_a_local_imagefolder(tmp_path):
    local = tmp_path / "hub"
    rows = []
    for i, color in enumerate(("red", "green", "blue")):
        write_image(local / "train" / f"{i}.png", color)
        rows.append({"file_name": f"{i}.png", "caption_0": f"a {color} square", "caption_1": f"the {color} thing"})
    (local / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = load_hub_captions("imagefolder", None, "train", "caption_0,caption_1", "image", tmp_path / "images",
                            data_dir=local)
    assert len(out) == 3 and all(p.exists() and p.suffix == ".jpg" for p in out.images)
    assert sorted(c[0] for c in out.captions) == ["a blue square", "a green square", "a red square"]
    with pytest.raises(DataError, match="no column.*'sentences'"):
        load_hub_captions("imagefolder", None, "train", "sentences", "image", tmp_path / "images", data_dir=local)


def test_unreadable_image_stops_the_task_naming_the_file(flickr, tmp_path):
    bad = flickr / "flickr8k" / "images" / "1005_abc.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="1005_abc.jpg"):
        tiny_task(flickr, tmp_path / "cache")


def test_tiny_caption_run_end_to_end_with_an_ensemble(flickr, tmp_path, capsys):
    out = tmp_path / "results"
    run.main(["--task", "caption", "--preset", "tiny", "--ensemble", "2", "--epochs", "3", "--data-dir", str(flickr),
              "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--run-dir", str(tmp_path / "runs"),
              "--no-progress", "--device", "cpu"])
    entries = json.loads((out / "caption" / "tiny-e3.json").read_text())
    assert [(e["variant"], e["seed"]) for e in entries] == [("none", 1), ("none", 2), ("none", None),
                                                           ("zaremba", 1), ("zaremba", 2), ("zaremba", None)]
    for entry in entries:
        metrics = entry["metrics"]
        assert {"test_ppl", "test_bleu4", "test_bleu1", "test_meteor", "test_rouge_l", "test_cider"} <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())
        assert len(entry["details"]["examples"]) == 2  # the tiny test split has 2 images
        assert entry["data"]["canonical"] is None and "not verified" in entry["data"]["checksums"]
    first = entries[0]["history"]
    assert first[-1]["train_loss"] < first[0]["train_loss"]
    table = (out / "caption" / "tiny-e3.md").read_text()
    assert "SPICE is left out" in table and "none (ensemble of 2)" in table
    assert (out / "caption" / "tiny-e3-examples.png").stat().st_size > 0
    [outputs] = (tmp_path / "runs").rglob("none-p0-ensemble/test_outputs.txt")
    outputs = outputs.read_text()
    assert outputs.splitlines()[0].startswith("flickr8k/images/1006_abc.jpg\t")
    from tasks.caption import describe as caption_cli

    best = str(tmp_path / "runs" / "caption" / "tiny-e3" / "zaremba-p0.3-seed1" / "best.pt")
    images = [str(flickr / "flickr8k" / "images" / name) for name in ("1006_abc.jpg", "1007_abc.jpg")]
    capsys.readouterr()
    caption_cli.main(["--checkpoint", best, "--checkpoint", best, "--beam", "2", "--device", "cpu", *images])
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in printed] == images
    with pytest.raises(SystemExit, match="is not a checkpoint of this suite"):
        caption_cli.main(["--checkpoint", str(tmp_path / "runs" / "caption" / "tiny-e3" / "zaremba-p0.3-seed1" /
                                              "checkpoint.pt"), images[0]])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        caption_cli.main(["--checkpoint", best, "--beam", "0", images[0]])
    assert "--beam must be >= 1, got 0" in capsys.readouterr().err
