"""Caption data for the captioning task: Flickr8k, COCO json, Karpathy split, image features and their cache."""
import json

import pytest
import torch
import torch.nn as nn
from PIL import Image

from core.download import DataError
from tasks.caption.data import load_coco_json, load_flickr8k, load_karpathy, parse_flickr8k_tokens, tokenize
from tasks.caption.encoders import Encoder, image_features, read_image


def write_image(path, color, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_flickr8k(root, splits=(("train", 4), ("dev", 2), ("test", 2))):
    folder = root / "flickr8k"
    lines, n = [], 0
    for split, count in splits:
        names = []
        for _ in range(count):
            name = f"{1000 + n}_abc.jpg"
            write_image(folder / "images" / name, (n * 20, 100, 200 - n * 20))
            lines += [f"{name}#{i}\tA dog number {n}, caption {i} ." for i in (1, 0, 2, 3, 4)]
            names.append(name)
            n += 1
        (folder / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    lines += [f"2258277193_586949ec62.jpg.1#{i}\tA ghost image ." for i in range(5)]  # as in the real file
    (folder / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return root


def test_flickr8k_parses_captions_in_order_and_skips_the_missing_image_with_one_warning(tmp_path):
    root = write_flickr8k(tmp_path)
    captions = parse_flickr8k_tokens(root / "flickr8k" / "Flickr8k.token.txt")
    assert captions["1000_abc.jpg"][:2] == ["A dog number 0, caption 0 .", "A dog number 0, caption 1 ."]
    assert len(captions["2258277193_586949ec62.jpg.1"]) == 5
    with pytest.warns(UserWarning, match="skipping 1 captioned image.*2258277193_586949ec62.jpg.1"):
        splits = load_flickr8k(root)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [4, 2, 2]
    assert splits["test"].images[0].name == "1006_abc.jpg" and len(splits["test"].captions[0]) == 5
    assert tokenize("A dog, number 0 .") == ["a", "dog", "number", "0"]


def test_missing_flickr8k_folder_says_where_and_what(tmp_path):
    with pytest.raises(DataError, match=r"flickr8k.*no stable public download.*Flickr8k.token.txt"):
        load_flickr8k(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("no tab here\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        parse_flickr8k_tokens(bad)


def test_coco_json_and_karpathy_loaders(tmp_path):
    write_image(tmp_path / "val2014" / "a.jpg", "red")
    coco = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 8, "file_name": "uncaptioned.jpg"}],
            "annotations": [{"image_id": 7, "id": 2, "caption": "second "},
                            {"image_id": 7, "id": 1, "caption": "first"}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco))
    loaded = load_coco_json(tmp_path / "captions_val2014.json", tmp_path / "val2014")
    assert loaded.images == [tmp_path / "val2014" / "a.jpg"] and loaded.captions == [["first", "second"]]
    karpathy = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": split, "sentences": [{"raw": f"{split} cap "}]}
        for split in ("train", "restval", "val", "test")]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    splits = load_karpathy(tmp_path / "dataset_coco.json", tmp_path)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [2, 1, 1]
    assert splits["train"].captions == [["train cap"], ["restval cap"]]
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json is not a COCO captions file"):
        load_coco_json(tmp_path / "broken.json", tmp_path)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_image_features_are_cached_and_rebuilt_for_another_encoder(tmp_path):
    torch.manual_seed(0)
    paths = [write_image(tmp_path / f"{i}.jpg", (i * 50, 0, 0)) for i in range(5)]
    encoder = Encoder("tiny-a", TinyCNN, 4, size=16)
    feats, hit = image_features(paths, encoder, tmp_path / "cache", batch_size=2, progress=False)
    assert feats.shape == (5, 4) and not hit
    again, hit = image_features(paths, encoder, tmp_path / "cache", batch_size=2, progress=False)
    assert hit and torch.equal(again, feats)
    never = Encoder("tiny-a", lambda: pytest.fail("a cache hit loaded the network"), 4, size=16)
    assert image_features(paths, never, tmp_path / "cache", progress=False)[1]
    other, hit = image_features(paths, Encoder("tiny-b", TinyCNN, 4, size=16), tmp_path / "cache", progress=False)
    assert not hit and not torch.equal(other, feats)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_the_same_images_in_another_order_miss_the_cache_and_keep_their_own_features(tmp_path):
    torch.manual_seed(0)
    paths = [write_image(tmp_path / f"{i}.jpg", (i * 50, 0, 0)) for i in range(4)]
    encoder = Encoder("tiny", TinyCNN, 4, size=16)
    torch.manual_seed(1)  # the tiny CNN is built (randomly) on each cache miss: the same weights both times
    feats, _ = image_features(paths, encoder, tmp_path / "cache", progress=False)
    torch.manual_seed(1)
    swapped, hit = image_features(paths[::-1], encoder, tmp_path / "cache", progress=False)
    assert not hit  # a hit would pair image i with row i of the other order
    assert torch.allclose(swapped, feats.flip(0), atol=1e-6)


def test_the_cache_follows_image_contents_not_file_times_or_folder(tmp_path):
    import os
    import shutil

    paths = [write_image(tmp_path / "a" / f"{i}.jpg", (i * 50, 0, 0)) for i in range(3)]
    encoder = Encoder("tiny", TinyCNN, 4, size=16)
    image_features(paths, encoder, tmp_path / "cache", progress=False)
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)  # a re-mounted or copied dataset: new times, same bytes
    copies = [copy / p.name for p in paths]
    for p in copies:
        os.utime(p, (1, 1))
    assert image_features(copies, encoder, tmp_path / "cache", progress=False)[1]
    write_image(copies[1], "green")  # same name, new picture: rebuilt
    assert not image_features(copies, encoder, tmp_path / "cache", progress=False)[1]


def test_unreadable_image_names_the_file_and_caches_nothing(tmp_path):
    good = write_image(tmp_path / "good.jpg", "blue")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        read_image(bad)
    with pytest.raises(DataError, match="bad.jpg"):
        image_features([good, bad], Encoder("tiny", TinyCNN, 4, size=16), tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*"))


def test_offline_efficientnet_lite0_encoder_gives_pooled_1280d_features(tmp_path):
    from tasks.caption.encoders import efficientnet_lite0

    paths = [write_image(tmp_path / f"{i}.jpg", color) for i, color in enumerate(("red", "green"))]
    feats, _ = image_features(paths, efficientnet_lite0(), tmp_path / "cache", progress=False)
    assert feats.shape == (2, 1280) and torch.isfinite(feats).all() and not torch.allclose(feats[0], feats[1])


def test_real_flickr8k_split_sizes_when_present():
    import os
    from pathlib import Path

    root = Path(os.environ.get("RNNREG_DATA_DIR", "/nonexistent"))
    if not (root / "flickr8k" / "Flickr8k.token.txt").exists():
        pytest.skip(f"no Flickr8k copy in {root / 'flickr8k'}")
    with pytest.warns(UserWarning, match="2258277193_586949ec62.jpg.1"):
        splits = load_flickr8k(root)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [6000, 1000, 1000]
    assert all(len(c) == 5 for s in splits.values() for c in s.captions)


def test_coco_caption_scores(monkeypatch):
    from tasks.caption import metrics as captions_data

    refs = [["A dog runs on the green grass.", "A brown dog is running."], ["Two people ride bikes down a street."]]
    exact = ["a dog runs on the green grass", "two people ride bikes down a street"]
    perfect, per_image = captions_data.coco_caption_scores(exact, refs)
    assert set(perfect) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
    assert perfect["bleu4"] == pytest.approx(100, abs=1e-4) and perfect["rouge_l"] == pytest.approx(100)
    wrong, _ = captions_data.coco_caption_scores(["a cat sleeps", "a red car"], refs)
    assert all(wrong[k] < perfect[k] for k in perfect)
    # per-image CIDEr in input order, whose mean is the corpus CIDEr (what the paired bootstrap resamples)
    half, per_half = captions_data.coco_caption_scores(["a dog runs on the green grass", "a red car"], refs)
    assert len(per_half["cider"]) == 2 and per_half["cider"][0] > per_half["cider"][1]
    assert sum(per_half["cider"]) / 2 == pytest.approx(half["cider"], rel=1e-4)
    assert sum(per_image["cider"]) / 2 == pytest.approx(perfect["cider"], rel=1e-4)
    with pytest.raises(ValueError, match="one hypothesis per image"):
        captions_data.coco_caption_scores(["a dog"], refs)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="need Java"):
        captions_data.coco_caption_scores(["a dog", "a cat"], refs)


def test_torchvision_encoder_from_a_local_weights_file(tmp_path):
    from torchvision import models

    from tasks.caption.encoders import torchvision_encoder

    torch.manual_seed(0)
    published = models.googlenet(weights=None, aux_logits=True, init_weights=False)  # the published file's layout
    torch.save(published.state_dict(), tmp_path / "googlenet.pth")
    encoder = torchvision_encoder("googlenet", tmp_path / "googlenet.pth")
    assert encoder.dim == 1024 and encoder.name.startswith("googlenet:googlenet.pth@")
    feats, _ = image_features([write_image(tmp_path / "a.jpg", "red")], encoder, tmp_path / "cache", progress=False)
    assert feats.shape == (1, 1024)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(DataError, match="wrong.pth is not a torchvision googlenet state dict"):
        torchvision_encoder("googlenet", tmp_path / "wrong.pth").load()
    with pytest.raises(ValueError, match="unknown encoder 'vgg'"):
        torchvision_encoder("vgg")
