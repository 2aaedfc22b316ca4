"""A disk cache for derived data (audio features, image features): computed once, reused while the settings
that produced it are the same. The file name carries a hash of those settings, so changing any of them
(encoder, feature settings, data) builds a new entry instead of reusing a stale one."""
import hashlib
import json
import os
from pathlib import Path

import torch

from core.utils import save_torch

ENV_CACHE_DIR = "RNNREG_CACHE_DIR"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "rnnreg" / "cache"


def cache_root(cli_value=None):
    """--cache-dir wins, then $RNNREG_CACHE_DIR, then ~/.cache/rnnreg/cache."""
    return Path(cli_value or os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR).expanduser()


def cache_path(root, name, key):
    """root/name-<hash of key>.pt; `key` is any JSON-able description of what the entry depends on."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root) / f"{name}-{digest}.pt"


def cached(root, name, key, build):
    """Load the entry for `key`, or `build()` it and save it atomically (an interrupted or failed build
    leaves nothing behind). Returns (value, hit)."""
    key = json.loads(json.dumps(key, sort_keys=True, default=str))  # the form it is stored in
    path = cache_path(root, name, key)
    if path.exists():
        entry = torch.load(path, weights_only=False)
        if entry.get("key") == key:
            return entry["value"], True
    value = build()
    save_torch({"key": key, "value": value}, path)
    return value, False


def files_fingerprint(paths):
    """An identity of a sequence of files for cache keys: each file's name and a hash of its bytes, in order.
    Contents, not modification times: a dataset copied or re-mounted elsewhere (new mtimes, same bytes) keeps
    its cache. The order counts: features stored as one tensor in path order must not be reused for the same
    files in another order (they would pair images with the wrong rows). Sort first where only the set matters."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(f"{path.name}|{file_digest(path)}\n".encode())
    return digest.hexdigest()[:16]


def file_digest(path, chunk=1 << 20):
    """blake2b of a file's bytes (hex)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
