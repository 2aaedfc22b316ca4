"""Image-caption corpora for the captioning task (paper section 4.4): Flickr8k, MSCOCO (captions json, Karpathy
split) and captioned image sets from the Hugging Face hub.

A split is a `CaptionSet`: image paths and, per image, its raw reference captions (Flickr8k and COCO have 5).
"""
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from core.download import ENV_DATA_DIR, DataError


@dataclass
class CaptionSet:
    images: list = field(default_factory=list)  # Paths
    captions: list = field(default_factory=list)  # per image: list of raw caption strings

    def __len__(self):
        return len(self.images)

    def first(self, limit):
        """The first `limit` images and their captions (all of them for None): a smoke test's cut."""
        return self if limit is None else CaptionSet(self.images[:limit], self.captions[:limit])


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
    except KeyError as err:
        raise DataError(f"{captions_json} is not a COCO captions file: an entry lacks the field {err} (expected "
                        "images with id and file_name, annotations with image_id, id and caption)") from None
    except (OSError, json.JSONDecodeError, TypeError) as err:
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
    for number, img in enumerate(images):
        split = names.get(img.get("split"))
        if split is None:
            raise DataError(f"{split_json}: image {img.get('filename')!r} has unknown split {img.get('split')!r}")
        try:
            splits[split].images.append(Path(image_root) / img.get("filepath", "") / img["filename"])
            splits[split].captions.append([s["raw"].strip() for s in img["sentences"]])
        except (KeyError, TypeError) as err:
            raise DataError(f"{split_json}: image entry {number} lacks the field {err} (expected filename and "
                            "sentences with raw)") from None
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
