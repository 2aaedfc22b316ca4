"""Parallel corpora for translation: Multi30k (default, offline-friendly) and any `datasets` hub corpus (WMT'14).

Multi30k task 1 comes from github.com/multi30k/dataset `data/task1`: `raw/<split>.<lang>.gz` (untokenized,
cased: the BLEU references) and `tok/<split>.lc.norm.tok.<lang>.gz` (lowercased, punctuation-normalised,
Moses-tokenized: what the model reads and writes). Files are aligned by line.
"""
import gzip
from pathlib import Path

from core.download import ENV_DATA_DIR, DataError, Source, ensure_files

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/"
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")
MULTI30K_SHA256 = {
    "raw/test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "raw/test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "raw/test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "raw/test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "raw/test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "raw/test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "raw/test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "raw/test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "raw/test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "raw/test_2017_mscoco.fr.gz": "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "raw/test_2018_flickr.cs.gz": "7d0a9db904f94c554a8c58049a9f3a5357c27f46cc3d710d70cb0b4a2585b8c2",
    "raw/test_2018_flickr.de.gz": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "raw/test_2018_flickr.en.gz": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
    "raw/test_2018_flickr.fr.gz": "fb2b83fcceb937a4f7e3e93c1c51c22aba92f1e342391e6b5ba392b16a920501",
    "raw/train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "raw/train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "raw/train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "raw/train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "raw/val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "raw/val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "raw/val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "raw/val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
    "tok/test_2016_flickr.lc.norm.tok.cs.gz": "05a33f51ffe06a88a82b8ccae74b569c649de578424e812ce2da2f8685b412db",
    "tok/test_2016_flickr.lc.norm.tok.de.gz": "a76a3410ab4c7e67741a5aa871e29dd63794c23adbce6af1f1c5c208dcd7f9dc",
    "tok/test_2016_flickr.lc.norm.tok.en.gz": "1b1c4f60928acb1a29fb224fcc68b9ac94910e1967e7dbfc7d75cf0461c69f2a",
    "tok/test_2016_flickr.lc.norm.tok.fr.gz": "24de684b5211a33731a732319ff9800a47c73d83bb0c046718bb9606a444fd0f",
    "tok/test_2017_flickr.lc.norm.tok.de.gz": "ffa9a2ffd20065f697e427db89b50e80b9d69354be602b9657488427e6f9bef8",
    "tok/test_2017_flickr.lc.norm.tok.en.gz": "6c63f53891196c60fe24a6e3e678e4f52899106d8cef049812f1f0ad45797a40",
    "tok/test_2017_flickr.lc.norm.tok.fr.gz": "54abd93908d1a3937a1ffe0a0e7967158117c7511b89cb72f143612a33d6c42b",
    "tok/test_2017_mscoco.lc.norm.tok.de.gz": "526502f5f2bae23c3359f550463f88bac738663a6a9083db49c954e6e6e98be6",
    "tok/test_2017_mscoco.lc.norm.tok.en.gz": "3bbc3d4c53ff76dae59a5c5757a338216981381d0dbc0094dc1b3f892fc44402",
    "tok/test_2017_mscoco.lc.norm.tok.fr.gz": "6f37216e34a63ff36c716218bb562ef4401b34a637b40dcc4dcb77f541c17b47",
    "tok/test_2018_flickr.lc.norm.tok.cs.gz": "e57b9583561055391ab631ceee7217d27401ae88c6e2f30a062b50a6f76010ef",
    "tok/test_2018_flickr.lc.norm.tok.de.gz": "6843ee949c3f8182d731652dd43f53ab9ff6dc61b1b1b1a1612cb050adeaaa4a",
    "tok/test_2018_flickr.lc.norm.tok.en.gz": "ef4a93b96143db0a79c60b5e8590ac26708fa8f9f8146139c1101db96aae6915",
    "tok/test_2018_flickr.lc.norm.tok.fr.gz": "4bcead9a621d3505909df8182b8688c5680dcd20ec77046633f83932b38e4956",
    "tok/train.lc.norm.tok.cs.gz": "8cdb9c49c0624548db32b08b810c8c1607a739f35b3d3fdb93e62d3391f36ece",
    "tok/train.lc.norm.tok.de.gz": "9e657200056850b40fd896fb21e5cdcc64d2cf4737f13e9bbbb0bace8c9897c4",
    "tok/train.lc.norm.tok.en.gz": "a86b4be7c7eb4dbcdce131bd3ffd520cff2baeb2ae3b3f03944c5b7e686dd70a",
    "tok/train.lc.norm.tok.fr.gz": "0178bf55531a86783a9d47bf5fc214d9b8590705b81f2e52d0ca086ebae57beb",
    "tok/val.lc.norm.tok.cs.gz": "08731ea07f3a1ce8c98c6e2ececff3fc8fe52188f44e53408e5f78276b4be331",
    "tok/val.lc.norm.tok.de.gz": "91e88b8624dc6bd78137ef5a5b23551653f287474bbb00e806b84280a0249af2",
    "tok/val.lc.norm.tok.en.gz": "e204882a67e915b232025b24272d01a376f1beb1dd3817729b5212e7f9838fcf",
    "tok/val.lc.norm.tok.fr.gz": "8dfb697d4e1519cb0b130b9017a9b3ef2dd58dca0546a2628f85c889aa853383",
}


class Pairs:
    """One split of a parallel corpus: token lists (what the model sees) and the raw text (the target side is
    the BLEU reference)."""

    def __init__(self, src_tokens, tgt_tokens, src_raw, tgt_raw):
        self.src_tokens, self.tgt_tokens, self.src_raw, self.tgt_raw = src_tokens, tgt_tokens, src_raw, tgt_raw

    def __len__(self):
        return len(self.src_tokens)

    def first(self, limit):
        """The first `limit` pairs (all of them for None): a smoke test's cut of the corpus."""
        if limit is None:
            return self
        return Pairs(self.src_tokens[:limit], self.tgt_tokens[:limit], self.src_raw[:limit], self.tgt_raw[:limit])


def multi30k_files(split, lang):
    return f"raw/{split}.{lang}.gz", f"tok/{split}.lc.norm.tok.{lang}.gz"


def ensure_multi30k(root, splits, langs, download=True, custom_data=False, checksums=MULTI30K_SHA256,
                    base_url=MULTI30K_URL):
    """Return (folder root/multi30k holding the verified files of `splits` x `langs`, non-canonical names)."""
    folder = Path(root) / "multi30k"
    wanted = [name for split in splits for lang in langs for name in multi30k_files(split, lang)]
    unknown = [name for name in wanted if name not in checksums]
    if unknown:
        raise DataError(f"Multi30k has no file {unknown[0]} (splits: {', '.join(MULTI30K_SPLITS)}; languages: "
                        f"en, de, fr for every split, cs for train, val, test_2016_flickr and test_2018_flickr)")
    sums = {name: checksums[name] for name in wanted}
    sources = [Source(base_url + name, filename=name) for name in wanted]
    noncanonical = ensure_files(folder, sums, sources, download, custom_data,
                                lambda missing: _missing_message(folder, missing))
    return folder, noncanonical


def _missing_message(folder, missing):
    return (f"Multi30k data not found: {', '.join(str(folder / m) for m in missing)}. Get data/task1/raw and "
            f"data/task1/tok from github.com/multi30k/dataset into {folder}/raw and {folder}/tok, or point "
            f"--data-dir / ${ENV_DATA_DIR} at the folder that contains multi30k/.")


def read_lines(path):
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is corrupt ({err}); delete it to re-download, or replace it with a good copy") from None


def read_aligned(paths):
    """Read line-aligned files; raise naming every file and its line count when the counts differ."""
    columns = [read_lines(p) for p in paths]
    empty = [str(p) for p, c in zip(paths, columns) if not c]
    if empty:
        raise DataError(f"{empty[0]} is empty: a split needs sentences; delete it to re-download, or replace it "
                        "with a good copy")
    counts = {str(p): len(c) for p, c in zip(paths, columns)}
    if len(set(counts.values())) > 1:
        raise DataError("parallel files are not aligned (line counts differ): "
                        + ", ".join(f"{p} has {n} lines" for p, n in counts.items()))
    return columns


def load_multi30k(folder, split, src, tgt):
    (src_raw, src_tok), (tgt_raw, tgt_tok) = multi30k_files(split, src), multi30k_files(split, tgt)
    src_raw_lines, tgt_raw_lines, src_lines, tgt_lines = read_aligned(
        [Path(folder) / name for name in (src_raw, tgt_raw, src_tok, tgt_tok)])
    return Pairs([line.split() for line in src_lines], [line.split() for line in tgt_lines], src_raw_lines,
                 tgt_raw_lines)


def moses_tokenize(lines, lang, lowercase=True):
    """Moses tokenisation (sacremoses) of raw text, as the Multi30k tok/ files were made."""
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    normalizer, tokenizer = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)
    out = []
    for line in lines:
        line = normalizer.normalize(line.lower() if lowercase else line)
        out.append(tokenizer.tokenize(line, escape=False))
    return out


def load_hub_pairs(name, config, split, src, tgt, data_files=None, limit=None, lowercase=True, cache_dir=None):
    """A `datasets` translation corpus ({"translation": {src: ..., tgt: ...}} rows), e.g. ("wmt14", "fr-en").

    With `data_files` (this split's local file), `name` is a `datasets` builder for local files ("json"):
    the same loader on local files, which is how the tests run it.
    """
    import datasets

    try:
        if data_files is not None:
            ds = datasets.load_dataset(name, data_files={split: data_files}, split=split, cache_dir=cache_dir)
        else:
            ds = datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
        raise DataError(f"could not load {name}/{config} split {split!r} with the datasets library: {err}. "
                        f"It needs internet on first use (then its cache), or use the multi30k corpus.") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = ds["translation"]
    missing = [lang for lang in (src, tgt) if not rows or lang not in rows[0]]
    if missing:
        raise DataError(f"{name}/{config} split {split!r} has no {missing} text (rows: {rows[:1]})")
    src_raw, tgt_raw = [r[src] for r in rows], [r[tgt] for r in rows]
    return Pairs(moses_tokenize(src_raw, src, lowercase), moses_tokenize(tgt_raw, tgt, lowercase), src_raw, tgt_raw)
