import io
import tarfile

import pytest
import torch

from core.download import DataError, Source, sha256
from tasks.lm.data import Corpus, batchify, bptt_chunks, ensure_ptb, num_chunks, read_words


def test_reader_adds_eos_and_vocab_is_in_first_appearance_order(tmp_path):
    folder = tmp_path / "ptb"
    folder.mkdir()
    (folder / "ptb.train.txt").write_text(" b a <unk> \n a N \n")
    (folder / "ptb.valid.txt").write_text(" a b \n")
    (folder / "ptb.test.txt").write_text(" N \n")
    assert read_words(folder / "ptb.train.txt") == ["b", "a", "<unk>", "<eos>", "a", "N", "<eos>"]
    corpus = Corpus(folder)
    assert corpus.vocab == ["b", "a", "<unk>", "<eos>", "N"]
    assert corpus.splits["valid"].tolist() == [1, 0, 3]


def test_unknown_word_in_valid_is_a_clear_error(tmp_path):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split, text in (("train", " a \n"), ("valid", " zebra \n"), ("test", " a \n")):
        (folder / f"ptb.{split}.txt").write_text(text)
    with pytest.raises(DataError, match="'zebra'"):
        Corpus(folder)


def test_batchify_makes_parallel_streams_and_targets_are_shifted():
    ids = torch.arange(23)
    streams = batchify(ids, 4)  # 23 // 4 = 5 steps per stream, the tail is dropped
    assert streams.tolist()[1] == [5, 6, 7, 8, 9]
    chunks = list(bptt_chunks(streams, 3))
    assert len(chunks) == num_chunks(streams, 3) == 2
    (x0, y0), (x1, y1) = chunks
    assert x0.shape == (4, 3) and x1.shape == (4, 1)  # the last window is shorter, nothing is lost
    assert torch.equal(y0, streams[:, 1:4]) and torch.equal(y1, streams[:, 4:5])


def test_missing_data_without_download_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        ensure_ptb(tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "ptb") in message and "ptb.train.txt" in message
    assert "--data-dir" in message and "RNNREG_DATA_DIR" in message and "simple-examples.tgz" in message


def test_unreachable_download_is_one_clear_error(tmp_path):
    sources = [Source("http://127.0.0.1:9/simple-examples.tgz", members={"x": "ptb.train.txt"})]
    with pytest.raises(DataError, match="(?s)PTB data not found.*download failed.*Connection refused"):
        ensure_ptb(tmp_path, sources=sources, checksums={"ptb.train.txt": "0" * 64})
    assert not any(p.name.startswith("ptb.") for p in (tmp_path / "ptb").iterdir())


def make_tarball(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"./simple-examples/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_download_from_tarball_on_loopback(tmp_path, served):
    www, url = served
    files = {f"ptb.{s}.txt": f" a b {s} \n a \n" for s in ("train", "valid", "test")}
    files["ptb.valid.txt"] = files["ptb.test.txt"] = " a b \n"
    make_tarball(www / "simple-examples.tgz", {**files, "ptb.char.train.txt": "ignored"})
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    checksums = {name: sha256(tmp_path / name) for name in files}
    sources = [Source(url + "simple-examples.tgz", members={f"simple-examples/data/{n}": n for n in files})]
    folder, noncanonical = ensure_ptb(tmp_path / "cache", sources=sources, checksums=checksums)
    assert noncanonical == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert Corpus(folder).vocab == ["a", "b", "train", "<eos>"]


def test_checksum_mismatch_falls_back_to_next_source_and_leaves_nothing_bad(tmp_path, served):
    www, url = served
    make_tarball(www / "bad.tgz", {"ptb.train.txt": " corrupted \n"})
    (www / "ptb.train.txt").write_text(" good \n")
    (tmp_path / "good.txt").write_text(" good \n")
    checksums = {"ptb.train.txt": sha256(tmp_path / "good.txt")}
    bad_only = [Source(url + "bad.tgz", members={"simple-examples/data/ptb.train.txt": "ptb.train.txt"})]
    with pytest.raises(DataError, match="sha256"):
        ensure_ptb(tmp_path / "c1", sources=bad_only, checksums=checksums)
    assert [p.name for p in (tmp_path / "c1" / "ptb").iterdir()] == []  # no half-written or bad file
    fallback = bad_only + [Source(url + "ptb.train.txt", filename="ptb.train.txt")]
    folder, _ = ensure_ptb(tmp_path / "c2", sources=fallback, checksums=checksums)
    assert (folder / "ptb.train.txt").read_text() == " good \n"


def test_modified_local_copy_stops_unless_custom_data_is_asked_for(tmp_path):
    folder = tmp_path / "ptb"
    folder.mkdir()
    (folder / "ptb.train.txt").write_text(" a \n")
    with pytest.raises(DataError, match="(?s)ptb.train.txt failed the sha256 check.*--custom-data"):
        ensure_ptb(tmp_path, download=False, checksums={"ptb.train.txt": "0" * 64})
    _, noncanonical = ensure_ptb(tmp_path, download=False, checksums={"ptb.train.txt": "0" * 64}, custom_data=True)
    assert noncanonical == ["ptb.train.txt"]


def test_real_ptb_when_available():
    """The canonical corpus (from $RNNREG_DATA_DIR, as CI sets it): Mikolov's split sizes and 10k vocab."""
    from core.download import data_root

    folder = data_root() / "ptb"
    if not (folder / "ptb.train.txt").exists():
        pytest.skip(f"no PTB copy in {folder}")
    folder, noncanonical = ensure_ptb(data_root(), download=False)
    assert noncanonical == []
    corpus = Corpus(folder)
    assert len(corpus.vocab) == 10000
    assert {s: len(ids) for s, ids in corpus.splits.items()} == {"train": 929589, "valid": 73760, "test": 82430}
