import json
import subprocess
import sys

import pytest

from benchmarks import report, run
from benchmarks.jobs import runner
from tasks.base import TASKS
from core.utils import git_commit
from tasks.base import load_checkpoint
from tasks.lm import sample as sample_cli
from tasks.lm.task import sample

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=300)


def test_runner_end_to_end_writes_table_plot_and_json_with_provenance(tiny_ptb, tmp_path, capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    run.main(["--task", "lm", "--preset", "tiny", "--variants", "none,zaremba,naive", "--data-dir", str(tiny_ptb), "--custom-data",
              "--out", str(out), "--run-dir", str(runs), "--no-progress", "--device", "cpu"])
    files = sorted(p.name for p in (out / "lm").iterdir())
    assert files == [".tiny.json.lock", "tiny.json", "tiny.md", "tiny.png"]  # the lock that merges wait on
    entries = json.loads((out / "lm" / "tiny.json").read_text())
    assert [(e["variant"], e["dropout"]) for e in entries] == [("naive", 0.3), ("none", 0.0), ("zaremba", 0.3)]
    for e in entries:
        assert set(e["metrics"]) >= {"train_ppl", "valid_ppl", "test_ppl"} and e["epochs"] == 2
        assert {"command", "git_commit", "torch", "device", "cpu_model"} <= set(e["provenance"])
        assert e["provenance"]["command"].startswith("python -m benchmarks.run --task lm --preset tiny")
        timings = e["timings"]  # every phase of the job, for the plans' estimates
        assert set(timings) == {"startup_s", "setup_s", "train_s", "final_s"} and timings["train_s"] == e["wall_s"]
        assert min(timings.values()) >= 0 and timings["final_s"] > 0
    assert [e["timings"]["startup_s"] for e in entries][::2] == [0.0, 0.0]  # naive, zaremba: trained after none
    table = (out / "lm" / "tiny.md").read_text()
    assert "| zaremba | 0.3 |" in table and "| none | 0 |" in table and "not a result" in table
    assert (out / "lm" / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    (out / "lm" / "tiny.md").unlink()
    report.main([str(out / "lm" / "tiny.json")])  # re-rendering from the JSON gives the same table
    assert (out / "lm" / "tiny.md").read_text() == table

    # A second call for one variant keeps the others in the table.
    run.main(["--task", "lm", "--preset", "tiny", "--variants", "none", "--seeds", "2", "--data-dir", str(tiny_ptb), "--custom-data",
              "--out", str(out), "--run-dir", str(runs), "--no-progress", "--epochs", "1"])
    assert (out / "lm" / "tiny-e1.json").exists()  # an epochs override never overwrites the preset's table
    assert len(json.loads((out / "lm" / "tiny.json").read_text())) == 3

    # The checkpoint samples text from a prompt (the paper's Figure 4).
    task, model = load_checkpoint(runs / "lm" / "tiny" / "zaremba-p0.3-seed1" / "best.pt", task="lm")
    vocab = task.vocab
    text = sample(model, vocab, "w1 w2", num_words=12, seed=3)
    assert text.startswith("w1 w2 ") and len(text.split()) == 14 and set(text.split()) <= set(vocab)
    assert text == sample(model, vocab, "w1 w2", num_words=12, seed=3)
    with pytest.raises(ValueError, match="not in it: \\['zebra'\\]"):
        sample(model, vocab, "w1 zebra")
    capsys.readouterr()
    sample_cli.main(["--checkpoint", str(runs / "lm" / "tiny" / "zaremba-p0.3-seed1" / "best.pt"), "--prompt", "w3",
                     "--words", "5", "--device", "cpu"])
    assert capsys.readouterr().out.startswith("w3 ")
    with pytest.raises(SystemExit, match="is not a checkpoint of this suite"):
        sample_cli.main(["--checkpoint", str(runs / "lm" / "tiny" / "zaremba-p0.3-seed1" / "checkpoint.pt")])


def test_resume_flag_reuses_finished_epochs(tiny_ptb, tmp_path):
    common = ["--task", "lm", "--preset", "tiny", "--variants", "zaremba", "--data-dir", str(tiny_ptb), "--custom-data",
              "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs"), "--no-progress"]
    run.main(common)
    first = json.loads((tmp_path / "r" / "lm" / "tiny.json").read_text())[0]
    run.main(common + ["--resume"])  # every epoch is checkpointed: nothing is trained again
    again = json.loads((tmp_path / "r" / "lm" / "tiny.json").read_text())[0]
    assert again["history"] == first["history"] and again["metrics"] == first["metrics"]


def test_list_shows_tasks_and_presets():
    result = run_cli("--list")
    assert result.returncode == 0
    tasks = [line.split(":")[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert tasks == ["caption", "lm", "mt", "speech", "dropout schemes (--variants)"]
    assert "  small: " in result.stdout and "hidden=1500" in result.stdout
    assert "dropout schemes (--variants): none, zaremba, naive, variational, weightdrop, zoneout" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--task", "nope", "--preset", "x"], "unknown task 'nope'; available: caption, lm, mt, speech. A task of your own: --user-dir"),
    (["--task", "lm", "--preset", "huge"], "--preset 'huge' is not a preset of task lm"),
    (["--task", "lm", "--preset", "cpu", "--variants", "none,dropconnect"], "unknown ['dropconnect']"),
    (["--task", "lm", "--preset", "cpu", "--seeds", "1,a"], "--seeds must be a comma list of integers"),
    (["--task", "lm", "--preset", "tiny", "--seeds", "1,2,1"], "--seeds gives 1 twice: name each once"),
    (["--task", "lm", "--preset", "tiny", "--seeds", "-1"], "--seeds -1: seeds are integers >= 0, got -1"),
    (["--task", "lm", "--preset", "tiny", "--variants", "none,none"], "--variants gives none twice: name each once"),
    (["--task", "lm", "--preset", "cpu", "--epochs", "0"], "--epochs must be >= 1"),
    (["--task", "lm", "--preset", "cpu", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--task", "lm", "--preset", "small", "--variants", "zaremba"], "preset small has dropout 0"),
    (["--task", "lm", "--preset", "cpu", "--device", "tpu9"], "bad --device 'tpu9'"),
    (["--task", "lm", "--preset", "cpu", "--checkpoint-every", "0"], "--checkpoint-every must be > 0 minutes"),
    (["--task", "lm", "--preset", "tiny", "--set", "embed_dropout=1.0"], "embed_dropout must be in [0, 1)"),
    (["--task", "lm", "--preset", "tiny", "--set", "max_tokens=0"], "--set max_tokens must be >= 1, got 0"),
])
def test_bad_flags_fail_fast_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_seed_0_is_a_seed_like_any_other():  # speech's cpu preset trains its dev fold as seed 0
    parser = runner.build_parser()
    args = parser.parse_args(["--task", "lm", "--preset", "tiny", "--seeds", "0,2", "--device", "cpu"])
    runner.validate(args, parser)
    assert args.seeds == [0, 2]


def test_missing_data_dir_is_one_clear_error(tmp_path):
    result = run_cli("--task", "lm", "--preset", "tiny", "--data-dir", str(tmp_path / "nowhere"), "--no-download",
                     "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1
    assert f"missing in {tmp_path / 'nowhere' / 'ptb'}" in result.stderr and "--data-dir" in result.stderr
    assert not (tmp_path / "r").exists()


def test_preset_is_optional_and_list_marks_each_tasks_default():
    args = runner.build_parser().parse_args(["--task", "mt"])
    runner.validate(args, runner.build_parser())
    assert args.preset == "cpu" and args.variants == ["none", "zaremba"]
    listing = run_cli("--list").stdout
    assert "mt: " in listing and "  cpu (default): " in listing and "  paper: " in listing


def test_data_failing_its_checksum_stops_the_run_and_names_the_flag(tiny_ptb, tmp_path):
    result = run_cli("--task", "lm", "--preset", "tiny", "--data-dir", str(tiny_ptb), "--no-download",
                     "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "failed the sha256 check" in result.stderr and "--custom-data" in result.stderr
    assert not (tmp_path / "r").exists()


def test_set_overrides_preset_keys_by_type_and_names_the_results(capsys):
    parser = runner.build_parser()
    args = parser.parse_args(["--task", "mt", "--set", "src=de", "--set", "beam=5", "--set", "max_vocab=8000"])
    runner.validate(args, parser)
    assert args.overrides == {"src": "de", "beam": 5, "max_vocab": 8000}
    assert runner.run_label(args) == "cpu-src=de-beam=5-max_vocab=8000"
    assert runner.run_config(TASKS["mt"], args, "zaremba", 1)["src"] == "de"
    args = parser.parse_args(["--task", "speech", "--set", "zoneout_cell=0.5"])  # a key no preset spells out
    runner.validate(args, parser)
    assert runner.run_config(TASKS["speech"], args, "zoneout", 1)["zoneout_cell"] == 0.5
    assert "zoneout_cell" not in runner.run_config(TASKS["speech"], args, "zaremba", 1)  # zoneout's alone
    for bad, message in [("colour=red", "preset cpu has no key 'colour'"), ("beam=wide", "expected a int like 12"),
                         ("epochs=3", "use --epochs"), ("beam", "takes KEY=VALUE")]:
        with pytest.raises(SystemExit):
            runner.validate(parser.parse_args(["--task", "mt", "--set", bad]), parser)
        assert message in capsys.readouterr().err


def test_valid_only_selection_runs_never_read_the_test_split(tiny_ptb, tmp_path, monkeypatch):
    from tasks.lm.task import LanguageModelTask

    original = LanguageModelTask.batches

    def guarded(self, split, device):
        assert split != "test", "a selection run read the test split"
        return original(self, split, device)

    monkeypatch.setattr(LanguageModelTask, "batches", guarded)
    run.main(["--task", "lm", "--preset", "tiny", "--variants", "zaremba", "--valid-only", "--data-dir", str(tiny_ptb),
              "--custom-data", "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs"), "--no-progress"])
    entry = json.loads((tmp_path / "r" / "lm" / "tiny-select.json").read_text())[0]
    assert "valid_ppl" in entry["metrics"] and not any(k.startswith("test_") for k in entry["metrics"])


def test_successor_schemes_train_with_their_own_p_and_fill_the_schemes_table(tiny_ptb, tmp_path, monkeypatch):
    tiny = TASKS["lm"].presets["tiny"]
    monkeypatch.setitem(TASKS["lm"].presets, "tiny", {**tiny, "scheme_dropout": {"zoneout": [0.1, 0.4]},
                                                          "embed_dropout": 0.1})
    monkeypatch.setitem(TASKS["lm"].published_anchors, "tiny", ["variational 9.9 (an anchor for the test)"])
    out = tmp_path / "results"
    run.main(["--task", "lm", "--preset", "tiny", "--variants", "none,variational,weightdrop,zoneout", "--data-dir",
              str(tiny_ptb), "--custom-data", "--out", str(out), "--run-dir", str(tmp_path / "runs"), "--no-progress",
              "--device", "cpu"])
    entries = json.loads((out / "lm" / "tiny.json").read_text())
    assert [(e["variant"], e["dropout"]) for e in entries] == [("none", 0.0), ("variational", 0.3),
                                                             ("weightdrop", 0.3), ("zoneout", 0.1)]
    assert all("scheme_dropout" not in e["config"] and e["config"]["embed_dropout"] == 0.1 for e in entries)
    assert [e["config"].get("zoneout_cell") for e in entries] == [None, None, None, 0.4]  # zoneout's own rate
    table = (out / "lm" / "tiny.md").read_text()
    assert "| zoneout | 0.1, cells 0.4 |" in table
    assert "zoneout p=0.1, cells 0.4 − none p=0" in table and "variational p=0.3 − zaremba" not in table  # no zaremba run
    assert "Published anchors (other papers' test numbers for this configuration, as printed; not our runs): " \
           "variational 9.9 (an anchor for the test)" in table
    assert "No task tables yet." in (out / "schemes.md").read_text()  # the cross-task table reads default presets


def test_a_stopped_run_prints_the_command_that_resumes_it(tiny_ptb, tmp_path, monkeypatch, capsys):
    from core.interrupt import Interrupted

    def fit(self, resume=False, test=True):
        raise Interrupted(self.run_dir / "checkpoint.pt")

    monkeypatch.setattr(run.Trainer, "fit", fit)
    with pytest.raises(SystemExit) as exit_:
        run.main(["--task", "lm", "--preset", "tiny", "--variants", "none", "--data-dir", str(tiny_ptb),
                  "--custom-data", "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "runs"), "--no-progress",
                  "--checkpoint-every", "5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and "stopped by a signal" in err
    assert "python -m benchmarks.run --task lm --preset tiny --variants none" in err and err.rstrip().endswith(
        "--checkpoint-every 5 --resume")
    assert not (tmp_path / "out" / "lm" / "tiny.json").exists()  # nothing half-written into the results


def test_provenance_commit_is_dirty_only_when_code_differs(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "core").mkdir()  # a checkout that tracks the source (core/, tasks/, benchmarks/)
    for name in ("core/model.py", "README.md", "results/table.json"):
        (tmp_path / name).write_text("0")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    head = git_commit(tmp_path)
    assert len(head) == 40
    (tmp_path / "README.md").write_text("1")
    (tmp_path / "results/table.json").write_text("1")
    assert git_commit(tmp_path) == head
    (tmp_path / "core" / "model.py").write_text("1")
    assert git_commit(tmp_path) == head + "-dirty"
