"""benchmarks.speed --precision: bf16 rows beside the fp32 rows and the fp32 reference where the CPU has native bf16
(read from /proc/cpuinfo, faked here by pointing the reader at a file of the test's text), one line and no bf16 row
where it has not; the provenance and the table name the CPU's bf16 flags; repeats interleaved; the profile; bf16
beam decoding with fp32 scores."""
import json

import pytest
import torch

import core.beam
import core.precision
from benchmarks import speed
from core.precision import autocast, cpu_bf16_flags, native_bf16, resolve_precision
from core.provenance import cpu_text, provenance

EPYC_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC 9454\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_bf16\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AVX512_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
TINY = ["--task", "lm", "--preset", "tiny", "--steps", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu"]


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Makes /proc/cpuinfo read as the given text: the real reader, reading another file."""
    def use(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(core.precision, "CPUINFO", path)
    return use


@pytest.mark.parametrize("text, flags, native", [(EPYC_BF16, ["avx512_bf16"], True),
                                                 (SAPPHIRE_RAPIDS, ["avx512_bf16", "amx_bf16", "amx_tile"], True),
                                                 (AVX512_ONLY, [], False), (GRAVITON3, ["bf16"], True),
                                                 ("processor\t: 0\n", [], False)])
def test_native_bf16_is_read_from_the_cpu_flags(text, flags, native):
    assert cpu_bf16_flags(text) == flags
    assert native_bf16("cpu", cpuinfo=text) is native


def test_plain_avx512_runs_fp32_although_onednn_would_emulate_bf16(cpuinfo, monkeypatch):
    cpuinfo(AVX512_ONLY)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # oneDNN: avx512_core is enough
    with pytest.warns(UserWarning, match="no native bf16 support"):
        assert resolve_precision("bf16", "cpu") == "fp32"
    cpuinfo(EPYC_BF16)
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_provenance_and_the_table_name_the_bf16_flags(cpuinfo, monkeypatch):
    cpuinfo(SAPPHIRE_RAPIDS)
    assert provenance("cpu")["cpu_bf16"] == ["avx512_bf16", "amx_bf16", "amx_tile"]
    assert cpu_text({"cpu_model": "Xeon", "cpu_capability": "AVX512", "cpu_bf16": ["amx_tile"]}) == \
        "Xeon, AVX512, no native bf16"  # tiles alone are no bf16 arithmetic
    assert cpu_text({"cpu_model": "EPYC", "cpu_capability": "AVX512", "cpu_bf16": ["avx512_bf16"]}) == \
        "EPYC, AVX512, native bf16 (avx512_bf16)"
    assert cpu_text({"cpu_model": "M2", "cpu_capability": "DEFAULT", "cpu_bf16": None}) == "M2, DEFAULT"  # no cpuinfo
    monkeypatch.setattr(core.precision, "CPUINFO", core.precision.CPUINFO.parent / "absent")
    assert provenance("cpu")["cpu_bf16"] is None


def test_without_native_bf16_one_line_says_so_and_no_bf16_row_is_timed(cpuinfo, tmp_path, capsys):
    cpuinfo(AVX512_ONLY)
    speed.main(TINY + ["--variants", "zaremba", "--precision", "fp32,bf16", "--no-memory", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "bf16" in line]
    capability = torch.backends.cpu.get_cpu_capability()
    assert said == [f"--precision bf16: this CPU (AMD EPYC 7B13, {capability}) has no native bf16 (none of "
                    "avx512_bf16, amx_bf16, bf16 in /proc/cpuinfo): no bf16 row is timed"]
    [entry] = json.loads((tmp_path / "lm" / "speed.json").read_text())
    assert list(entry["results"]) == ["reference", "zaremba"] and entry["precisions"] == ["fp32"]
    with pytest.raises(SystemExit, match="no bf16 row is timed, and nothing else was asked for"):
        speed.main(TINY + ["--precision", "bf16", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def test_bf16_rows_stand_beside_fp32_rows_and_the_reference_stays_fp32(cpuinfo, tmp_path, monkeypatch):
    from tasks.lm.reference import ReferenceLM
    from tasks.lm.task import LanguageModel

    cpuinfo(EPYC_BF16)
    autocast_in = {"reference": set(), "ours": set()}
    for cls, key in ((ReferenceLM, "reference"), (LanguageModel, "ours")):
        def spy(self, *args, _forward=cls.forward, _key=key):
            autocast_in[_key].add(torch.is_autocast_enabled("cpu"))
            return _forward(self, *args)
        monkeypatch.setattr(cls, "forward", spy)
    speed.main(TINY + ["--variants", "none,zaremba", "--precision", "fp32,bf16", "--out", str(tmp_path)])
    [entry] = json.loads((tmp_path / "lm" / "speed.json").read_text())
    assert list(entry["results"]) == ["reference", "none", "none-bf16", "zaremba", "zaremba-bf16"]
    assert entry["precisions"] == ["fp32", "bf16"] and entry["provenance"]["cpu_bf16"] == ["avx512_bf16"]
    assert entry["results"]["zaremba-bf16"]["peak_mb"] > 0
    assert autocast_in == {"reference": {False}, "ours": {False, True}}  # never the reference under autocast
    table = (tmp_path / "lm" / "speed.md").read_text()
    assert f"({cpu_text(entry['provenance'])}, {torch.get_num_threads()} thread" in table
    assert "native bf16 (avx512_bf16)" in cpu_text(entry["provenance"])
    row = next(line for line in table.splitlines() if line.startswith("| zaremba-bf16 |"))
    assert row.count("x |") == 2  # train and eval against the reference
    assert "precision fp32 and bf16" in table


def test_fp32_and_bf16_sections_of_one_preset_coexist_and_a_rerun_replaces_its_own(cpuinfo, tmp_path):
    cpuinfo(EPYC_BF16)
    args = TINY + ["--variants", "zaremba", "--no-memory", "--out", str(tmp_path)]
    for precision in ("fp32", "bf16", "fp32"):
        speed.main(args + ["--precision", precision])
    entries = json.loads((tmp_path / "lm" / "speed.json").read_text())
    assert [list(e["results"]) for e in entries] == [["reference", "zaremba-bf16"], ["reference", "zaremba"]]
    assert (tmp_path / "lm" / "speed.md").read_text().count("## preset `tiny`") == 2


def test_repeats_interleave_every_implementation_and_report_the_median(monkeypatch):
    order = []
    impls = {name: {"train_tok_s": (lambda name=name: order.append(name), 100)}
             for name in ("reference", "zaremba", "zaremba-bf16")}
    monkeypatch.setattr(speed, "implementations", lambda *args, **kwargs: impls)
    seconds = iter([1.0, 2.0, 4.0, 3.0, 2.0, 1.0, 2.0, 4.0, 2.0, 9.0, 9.0, 9.0, 5.0, 5.0, 5.0])
    monkeypatch.setattr(speed, "timed", lambda fn, device: (fn(), next(seconds))[1])
    results = speed.measure(None, {}, ["zaremba"], torch.device("cpu"), 2, warmup=0, repeats=5,
                            precisions=["fp32", "bf16"])
    assert order == ["reference", "zaremba", "zaremba-bf16"] * 5  # A B C A B C ...: drift hits all alike
    # each implementation's median: reference of 1, 3, 2, 9, 5; zaremba of 2, 2, 4, 9, 5; bf16 of 4, 1, 2, 9, 5
    assert results == {"reference": {"train_tok_s": 100 / 3.0}, "zaremba": {"train_tok_s": 100 / 4.0},
                       "zaremba-bf16": {"train_tok_s": 100 / 4.0}}


def test_profile_prints_the_top_ops_of_a_training_pass_and_writes_nothing(cpuinfo, tmp_path, capsys):
    cpuinfo(EPYC_BF16)
    speed.main(TINY + ["--variants", "zaremba", "--precision", "fp32,bf16", "--profile", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("## ")]
    assert headers == [f"## {name}: one training pass (40 tokens), top 15 ops by self CPU time"
                       for name in ("reference", "zaremba", "zaremba-bf16")]
    assert out.count("Self CPU time total") == 3 and "aten::_log_softmax" in out
    assert not (tmp_path / "lm").exists()


def test_bf16_beam_search_keeps_its_scores_in_fp32(monkeypatch):
    from tasks.mt.task import Seq2Seq

    torch.manual_seed(0)
    model = Seq2Seq(src_vocab=20, tgt_vocab=15, emb=8, hidden=12, layers=2, dropout=0.3).eval()
    seen, ranked = [], []
    real_top = core.beam.top_candidates

    def step(tokens, state):
        logits, state = model.step(tokens, state)
        seen.append(logits.dtype)
        return logits, state

    def top(scores, log_probs, k):
        ranked.append((scores.dtype, log_probs.dtype))
        return real_top(scores, log_probs, k)

    monkeypatch.setattr(core.beam, "top_candidates", top)
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    with torch.no_grad(), autocast("bf16", "cpu"):
        tokens, scores = core.beam.beam_search(step, model.encode(src, torch.tensor([4, 3])), 2, 2, 3, beam_size=4,
                                               max_len=6)
    assert set(seen) == {torch.bfloat16}  # the decoder really ran in bf16
    assert set(ranked) == {(torch.float32, torch.float32)}  # log_softmax and the running scores in fp32
    assert len(tokens) == 2 and all(score < 0 for score in scores)


def test_mt_decoding_is_timed_under_bf16_autocast(cpuinfo, tmp_path, monkeypatch):
    import tasks.mt.task

    cpuinfo(EPYC_BF16)
    autocast_in = set()
    real_beam = tasks.mt.task.beam_search

    def spy(*args, **kwargs):
        autocast_in.add(torch.is_autocast_enabled("cpu"))
        return real_beam(*args, **kwargs)

    monkeypatch.setattr(tasks.mt.task, "beam_search", spy)
    speed.main(["--task", "mt", "--preset", "tiny", "--variants", "zaremba", "--precision", "bf16", "--steps", "2",
                "--repeats", "1", "--warmup", "0", "--no-memory", "--out", str(tmp_path), "--device", "cpu"])
    [entry] = json.loads((tmp_path / "mt" / "speed.json").read_text())
    assert list(entry["results"]) == ["zaremba-bf16"]
    assert all(entry["results"]["zaremba-bf16"][job] > 0 for job in ("train_tok_s", "beam12_sent_s", "beam1_sent_s"))
    assert autocast_in == {True}
    table = (tmp_path / "mt" / "speed.md").read_text()
    assert "| zaremba-bf16 |" in table and "vs " not in table  # no peer: a bf16 row is never taken for one
