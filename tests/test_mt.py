import gzip
import json
import random

import pytest
import torch

from benchmarks import run
from core.download import DataError
from tasks.base import load_checkpoint
from tasks.mt.task import PRESETS, TranslationTask, translate
from tasks.mt.data import ensure_multi30k

EN = [f"e{i}" for i in range(12)]
FR = {w: f"f{i}" for i, w in enumerate(EN)}  # a word-for-word "translation": learnable in seconds


def write_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def synthetic_pairs(count, rng):
    en = [[rng.choice(EN) for _ in range(rng.randint(2, 6))] for _ in range(count)]
    return [" ".join(s) for s in en], [" ".join(FR[w] for w in s) for s in en]


def write_tiny_multi30k(root, sizes=(300, 30, 30), seed=0):
    """The Multi30k layout (raw/ and tok/, gzipped, aligned by line) with a tiny synthetic corpus."""
    rng = random.Random(seed)
    for split, count in zip(("train", "val", "test_2016_flickr"), sizes):
        en, fr = synthetic_pairs(count, rng)
        for lang, lines in (("en", en), ("fr", fr)):
            write_gz(root / "multi30k" / "raw" / f"{split}.{lang}.gz", [line.capitalize() + "." for line in lines])
            write_gz(root / "multi30k" / "tok" / f"{split}.lc.norm.tok.{lang}.gz", [line + " ." for line in lines])
    return root


@pytest.fixture
def tiny_multi30k(tmp_path):
    return write_tiny_multi30k(tmp_path / "data")


def tiny_config(**overrides):
    return {**PRESETS["tiny"], "scheme": "zaremba", "seed": 1, **overrides}


def test_multi30k_loads_splits_vocab_and_raw_references(tiny_multi30k):
    task = TranslationTask(tiny_config(), tiny_multi30k, download=False, custom_data=True).load_data()
    assert {s: len(p) for s, p in task.pairs.items()} == {"train": 300, "valid": 30, "test": 30}
    assert set(task.src_vocab.words[4:]) == set(EN) | {"."} and set(task.tgt_vocab.words[4:]) == set(FR.values()) | {"."}
    test = task.pairs["test"]
    assert test.tgt_raw[0] == " ".join(test.tgt_tokens[0][:-1]).capitalize() + "."  # the untokenized reference
    assert task.noncanonical  # the tiny files are not the published ones, and the task says so


def test_the_limits_cut_multi30k_to_its_first_pairs(tiny_multi30k):
    """The tiny preset's train_limit / valid_limit / test_limit: seconds on the real corpus too."""
    whole = TranslationTask(tiny_config(), tiny_multi30k, download=False, custom_data=True).load_data().pairs
    cut = TranslationTask(tiny_config(train_limit=50, valid_limit=5, test_limit=None), tiny_multi30k, download=False,
                          custom_data=True).load_data().pairs
    assert {s: len(p) for s, p in cut.items()} == {"train": 50, "valid": 5, "test": 30}
    assert cut["train"].src_tokens == whole["train"].src_tokens[:50]
    assert cut["valid"].tgt_raw == whole["valid"].tgt_raw[:5]


def test_files_failing_the_checksum_stop_the_run_unless_custom_data(tiny_multi30k):
    with pytest.raises(DataError, match="(?s)train.en.gz.*failed the sha256 check.*--custom-data"):
        TranslationTask(tiny_config(), tiny_multi30k, download=False).load_data()


def test_line_count_mismatch_names_both_files_and_counts(tiny_multi30k):
    path = tiny_multi30k / "multi30k" / "tok" / "val.lc.norm.tok.fr.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    write_gz(path, lines[:-3])
    with pytest.raises(DataError) as err:
        TranslationTask(tiny_config(), tiny_multi30k, download=False, custom_data=True).load_data()
    message = str(err.value)
    assert "not aligned" in message and f"{path} has 27 lines" in message
    assert "val.lc.norm.tok.en.gz has 30 lines" in message


def test_missing_language_file_names_it_and_says_how_to_get_it(tiny_multi30k):
    (tiny_multi30k / "multi30k" / "raw" / "test_2016_flickr.fr.gz").unlink()
    with pytest.raises(DataError) as err:
        TranslationTask(tiny_config(), tiny_multi30k, download=False, custom_data=True).load_data()
    message = str(err.value)
    assert str(tiny_multi30k / "multi30k" / "raw" / "test_2016_flickr.fr.gz") in message
    assert "github.com/multi30k/dataset" in message and "--data-dir" in message
    with pytest.raises(DataError, match="Multi30k has no file raw/test_2017_mscoco.cs.gz"):
        ensure_multi30k(tiny_multi30k, ["test_2017_mscoco"], ["cs"], download=False)


def test_the_datasets_path_on_local_files(tmp_path):
    rng = random.Random(1)
    files = {}
    for split, count in (("train", 40), ("validation", 5), ("test", 5)):
        en, fr = synthetic_pairs(count, rng)
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"translation": {"en": e + ", ok.", "fr": f + "."}}) + "\n"
                                for e, f in zip(en, fr)))
        files[split] = str(path)
    config = tiny_config(corpus="hub", hub_name="json", hub_data_files=files, valid_set="validation", test_set="test",
                         hub_cache_dir=str(tmp_path / "hf-cache"))
    task = TranslationTask(config, tmp_path, download=False).load_data()
    assert {s: len(p) for s, p in task.pairs.items()} == {"train": 40, "valid": 5, "test": 5}
    first = task.pairs["train"]
    assert first.src_tokens[0][-3:] == [",", "ok", "."]  # Moses-tokenized, lowercased
    assert first.tgt_raw[0].endswith(".") and not task.noncanonical


def test_end_to_end_tiny_run_writes_bleu_examples_overview_and_a_checkpoint_that_decodes_alone(tiny_multi30k, tmp_path,
                                                                                              capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    run.main(["--task", "mt", "--preset", "tiny", "--data-dir", str(tiny_multi30k), "--custom-data",
              "--out", str(out), "--run-dir", str(runs), "--no-progress", "--device", "cpu"])
    entries = json.loads((out / "mt" / "tiny.json").read_text())
    assert [e["variant"] for e in entries] == ["none", "zaremba"]
    for e in entries:
        assert {"train_ppl", "valid_ppl", "test_ppl", "test_bleu"} <= set(e["metrics"])
        assert e["details"]["bleu_signature"].startswith("nrefs:1|case:lc|")
        assert len(e["details"]["examples"]) == 5 and e["data"]["canonical"] is False
    table = (out / "mt" / "tiny.md").read_text()
    assert "test BLEU" in table and "sacreBLEU signature: `nrefs:1|case:lc" in table
    assert "## Example test outputs" in table and "   - zaremba (p=0.2): " in table
    assert "non-canonical data" in table
    overview = (out / "README.md").read_text()
    assert "| mt | tiny (not a paper config) | test ppl / BLEU |" in overview and "[tiny.md](mt/tiny.md)" in overview

    run_dir = runs / "mt" / "tiny" / "zaremba-p0.2-seed1"
    loaded, model = load_checkpoint(run_dir / "best.pt", task="mt")  # weights, config and vocabularies; no data
    config = loaded.config
    task = TranslationTask(config, tiny_multi30k, download=False, custom_data=True).load_data()
    assert loaded.src_vocab.words == task.src_vocab.words and loaded.tgt_vocab.words == task.tgt_vocab.words
    hyps = translate([model], loaded.src_vocab, loaded.tgt_vocab, task.pairs["test"].src_tokens[:3], config, "cpu")
    from tasks.mt.task import detokenize
    written = (run_dir / "test_outputs.txt").read_text().splitlines()
    assert detokenize(hyps, "fr") == written[:3]

    from tasks.mt import translate as translate_cli
    capsys.readouterr()
    best = str(run_dir / "best.pt")
    translate_cli.main(["--checkpoint", best, "--checkpoint", best, "--text", "E1 e2 e3.", "--beam", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1  # one translation for one sentence, in the target vocabulary
    assert set(out.replace(".", " ").split()) <= set(FR.values()) | {"<unk>"}
    with pytest.raises(SystemExit, match="is not a checkpoint of this suite"):
        translate_cli.main(["--checkpoint", str(run_dir / "checkpoint.pt"), "--text", "e1"])
    from benchmarks import speed

    speed.main(["--checkpoint", best, "--data-dir", str(tiny_multi30k), "--custom-data", "--repeats", "1",
                "--out", str(tmp_path / "speed"), "--device", "cpu"])
    [entry] = json.loads((tmp_path / "speed" / "mt" / "speed.json").read_text())
    assert entry["kind"] == "trained" and entry["split"] == "valid" and entry["results"]["decode_sent_s"] > 0
    assert "## Decoding a trained model" in (tmp_path / "speed" / "mt" / "speed.md").read_text()
    lm_like = tmp_path / "lm_best.pt"
    torch.save({**torch.load(best, weights_only=False), "task": "lm"}, lm_like)
    with pytest.raises(SystemExit, match="is a lm checkpoint, not mt"):
        translate_cli.main(["--checkpoint", str(lm_like), "--text", "e1"])


def test_tiny_model_learns_to_translate(tmp_path):
    from core import Trainer, TrainConfig

    data = write_tiny_multi30k(tmp_path / "data", sizes=(800, 30, 30))
    config = tiny_config(epochs=8, hidden=64, emb=32, dropout=0.0, scheme="none", decay_start=8, lr=0.02,
                         batch_size=16, train_limit=None)  # all 800 pairs (the preset's cut is for the real corpus)
    task = TranslationTask(config, data, download=False, custom_data=True).load_data()
    torch.manual_seed(0)
    trainer = Trainer(task, task.build_model(), TrainConfig.from_dict(config), tmp_path / "run", "cpu", progress=False)
    before = trainer.evaluate("valid")["ppl"]
    result = trainer.fit()
    assert result["metrics"]["valid_ppl"] < before / 5
    assert result["metrics"]["test_bleu"] > 20


def test_multi30k_downloads_verifies_and_places_files_from_a_mirror(tmp_path, served):
    from core.download import sha256

    www, url = served
    source = write_tiny_multi30k(tmp_path / "made", sizes=(3, 3, 3)) / "multi30k"
    for sub in ("raw", "tok"):
        (www / sub).mkdir()
        for path in (source / sub).iterdir():
            (www / sub / path.name).write_bytes(path.read_bytes())
    names = ["raw/val.en.gz", "tok/val.lc.norm.tok.en.gz"]
    checksums = {name: sha256(source / name) for name in names}
    folder, noncanonical = ensure_multi30k(tmp_path / "cache", ["val"], ["en"], checksums=checksums, base_url=url)
    assert noncanonical == [] and all((folder / name).read_bytes() == (source / name).read_bytes() for name in names)
    bad = {**checksums, "raw/val.en.gz": "0" * 64}
    with pytest.raises(DataError, match="(?s)Multi30k data not found.*download failed.*sha256"):
        ensure_multi30k(tmp_path / "cache2", ["val"], ["en"], checksums=bad, base_url=url)
    assert not (tmp_path / "cache2" / "multi30k" / "raw" / "val.en.gz").exists()


def test_batches_cover_every_pair_once_with_padding_and_teacher_forcing(tiny_multi30k):
    task = TranslationTask(tiny_config(batch_size=7), tiny_multi30k, download=False, custom_data=True).load_data()
    src_ids, tgt_ids = task.data["train"]
    torch.manual_seed(0)
    seen = []
    for src, src_len, tgt in task.batches("train", "cpu"):
        assert src.size(0) == tgt.size(0) == len(src_len) <= 7
        for row in range(src.size(0)):
            n = int(src_len[row])
            assert (src[row, n:] == task.src_vocab.pad).all() and (src[row, :n] != task.src_vocab.pad).all()
            target = [t for t in tgt[row].tolist() if t != task.tgt_vocab.pad]
            assert target[0] == task.tgt_vocab.bos and target[-1] == task.tgt_vocab.eos
            seen.append((tuple(src[row, :n].tolist()), tuple(target)))
    assert sorted(seen) == sorted(zip(map(tuple, src_ids), map(tuple, tgt_ids)))  # every pair exactly once
    assert task.num_batches("train") == -(-len(src_ids) // 7)


def test_encoder_reads_each_source_reversed_whatever_its_padding():
    from tasks.mt.task import Seq2Seq

    torch.manual_seed(0)
    model = Seq2Seq(src_vocab=30, tgt_vocab=20, emb=8, hidden=10, layers=2, dropout=0.5).eval()
    sources = [[5, 6, 7, 8], [9, 10]]
    padded = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    h, c = model.encode(padded, torch.tensor([4, 2]))
    for row, tokens in enumerate(sources):
        reversed_input = model.src_embed(torch.tensor([tokens[::-1]]))
        _, (h_ref, c_ref) = model.encoder(reversed_input)
        assert torch.allclose(h[:, row], h_ref[:, 0], atol=1e-6) and torch.allclose(c[:, row], c_ref[:, 0], atol=1e-6)
