"""Extension by registration: a task of one's own through --user-dir, presets checked key by key, task packages
found on their own, tools that know tasks only through the interface, dropout schemes as objects."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import report, speed
from core import SCHEMES, DropoutLSTM, Scheme
from tasks import registry
from tasks.base import load_tasks

ROOT = Path(__file__).resolve().parent.parent

CHARLM = '''
import torch

from tasks.base import register
from tasks.lm.task import LanguageModelTask


@register
class CharLM(LanguageModelTask):
    """Character-level language modeling of data_dir/chars.txt (90% train, 5% valid, 5% test)."""
    name = "charlm"
    description = "Character-level LM on chars.txt"
    presets = {"tiny": dict(hidden=16, layers=2, init=0.1, dropout=0.3, epochs=2, lr=1.0, decay_start=1,
                            lr_decay=2.0, bptt=8, clip=5.0, batch_size=4, eval_batch_size=2)}
    default_preset = "tiny"
    preset_notes = {"tiny": "A toy."}
    paper_results = {}

    def load_data(self):
        text = (self.data_dir / "chars.txt").read_text()
        self.vocab = sorted(set(text))
        ids = torch.tensor([self.vocab.index(c) for c in text])
        a, b = int(len(ids) * 0.9), int(len(ids) * 0.95)
        self.use_token_streams({"train": ids[:a], "valid": ids[a:b], "test": ids[b:]})
        return self
'''


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture
def restore_registry():
    """The in-process --user-dir calls register the user's task: take it out again for the other tests."""
    tasks, dirs, path, modules = dict(registry.TASKS), set(registry._IMPORTED_DIRS), list(sys.path), set(sys.modules)
    yield
    registry.TASKS.clear()
    registry.TASKS.update(tasks)
    registry._IMPORTED_DIRS.clear()
    registry._IMPORTED_DIRS.update(dirs)
    sys.path[:] = path
    for name in set(sys.modules) - modules:  # the user's modules only: torch's lazy imports must stay loaded
        file = getattr(sys.modules[name], "__file__", None) or ""  # (re-importing them registers ops twice)
        if file and not file.startswith((sys.prefix, sys.base_prefix)):
            del sys.modules[name]


def test_a_task_in_a_users_folder_trains_reports_and_is_timed(tmp_path, restore_registry):
    user = tmp_path / "my_tasks"
    user.mkdir()
    (user / "charlm.py").write_text(CHARLM)
    data = tmp_path / "data"
    data.mkdir()
    (data / "chars.txt").write_text("the cat sat on the mat. " * 120)
    out, runs = tmp_path / "results", tmp_path / "runs"
    result = run_cli("--task", "charlm", "--data-dir", str(data), "--out", str(out), "--run-dir", str(runs),
                     "--no-progress", "--user-dir", str(user))
    assert result.returncode == 0, result.stderr
    entries = json.loads((out / "charlm" / "tiny.json").read_text())
    assert [(e["variant"], e["seed"]) for e in entries] == [("none", 1), ("zaremba", 1)]
    assert all(e["metrics"]["test_ppl"] < 12 for e in entries)  # 12 characters: it learned something
    table = (out / "charlm" / "tiny.md").read_text()
    # $RNNREG_USER_DIR works like --user-dir, and the report re-renders the user's table identically
    listing = run_cli("--list", env={"RNNREG_USER_DIR": str(user)}).stdout
    assert "charlm: Character-level LM on chars.txt" in listing
    report.main([str(out / "charlm" / "tiny.json"), "--user-dir", str(user)])
    assert (out / "charlm" / "tiny.md").read_text() == table
    speed.main(["--user-dir", str(user), "--task", "charlm", "--variants", "none,zaremba", "--steps", "2",
                "--repeats", "1", "--warmup", "0", "--out", str(out), "--device", "cpu"])
    results = json.loads((out / "charlm" / "speed.json").read_text())[0]["results"]
    assert {"reference", "none", "zaremba"} <= set(results)
    missing = run_cli("--task", "charlm", "--data-dir", str(data))
    assert missing.returncode == 2 and "unknown task 'charlm'" in missing.stderr and "--user-dir" in missing.stderr


def test_a_missing_optional_dependency_makes_one_task_unavailable_not_every_task(tmp_path):
    block = "import sys; sys.modules['torchaudio'] = None; "  # `import torchaudio` now fails as if not installed
    listing = subprocess.run([sys.executable, "-c", block + "from benchmarks import run; run.main(['--list'])"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert "speech: unavailable here: it needs the Python package 'torchaudio'" in listing.stdout
    assert "lm: PTB" in listing.stdout and "mt: Seq2seq" in listing.stdout
    asked = subprocess.run([sys.executable, "-c", block + "from benchmarks import run; run.main(['--task', 'speech'])"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert asked.returncode == 2 and "task 'speech' is unavailable here: it needs the Python package 'torchaudio'" in asked.stderr
    tool = subprocess.run([sys.executable, "-c", block + "import tasks.mt.translate, tasks.caption.describe"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert tool.returncode == 0, tool.stderr


def test_every_preset_of_every_task_uses_only_keys_the_task_knows():
    for name, task_cls in load_tasks().items():
        for preset, config in task_cls.presets.items():
            task_cls.check_keys(config)  # raises on a key the task does not read


def test_a_typo_in_a_config_key_is_one_error_naming_it():
    from tasks.lm.task import PRESETS, LanguageModelTask

    with pytest.raises(ValueError, match="task lm: unknown config key 'hiden' \\(did you mean 'hidden'\\?\\)"):
        LanguageModelTask({**PRESETS["tiny"], "hiden": 32})


def _imports(path):
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_no_circle_and_benchmarks_know_tasks_only_through_the_interface():
    assert not [n for n in _imports(ROOT / "tasks" / "__init__.py") if n.startswith("tasks.") and n != "tasks.base"]
    for path in (ROOT / "tasks").rglob("*.py"):
        own = path.parent.name if path.parent.name != "tasks" else None
        for name in _imports(path):
            if name == "tasks":
                pytest.fail(f"{path} imports the tasks package that finds it (a circle)")
            parts = name.split(".")
            if parts[0] == "tasks" and len(parts) > 1 and parts[1] not in ("base", "registry", own):
                pytest.fail(f"{path} imports another task's package: {name}")
            assert parts[0] != "benchmarks", f"{path} imports {name}: tasks sit below benchmarks"
    for path in (ROOT / "benchmarks").glob("*.py"):
        for name in _imports(path):
            assert name in ("tasks", "tasks.base") or not name.startswith("tasks"), f"{path} imports {name}"
    for path in (ROOT / "core").glob("*.py"):
        assert not [n for n in _imports(path) if n.split(".")[0] in ("tasks", "benchmarks")], path


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for folder in ("core", "tasks", "benchmarks") for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_a_new_dropout_scheme_is_one_class(monkeypatch):
    class Halve(Scheme):
        """Scales h_{t-1} by 0.5 (not a real scheme: it shows where the hooks act)."""
        name = "halve"
        fused = False

        def recurrent_mask(self, h, steps, training, masks, layer):
            return h.new_full((), 0.5)

    monkeypatch.setitem(SCHEMES, "halve", Halve)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)
    plain = DropoutLSTM(3, 5, 1, 0.0, "none", stepwise=True)
    halved = DropoutLSTM(3, 5, 1, 0.0, "halve")
    halved.load_state_dict(plain.state_dict())
    assert halved.stepwise  # a scheme that acts in the recurrence takes the per-step path on its own
    out_plain, _ = plain(x)
    out_halved, _ = halved(x)
    assert torch.allclose(out_plain[:, 0], out_halved[:, 0])  # h_0 = 0: the first step is the same
    assert not torch.allclose(out_plain[:, 1:], out_halved[:, 1:])
    with pytest.raises(ValueError, match="acts inside the recurrence and needs stepwise=True"):
        DropoutLSTM(3, 5, 1, 0.0, "halve", stepwise=False)


GAUSS = """import torch
from core import Scheme, register_scheme

@register_scheme
class GaussianDropout(Scheme):
    '''Multiplicative Gaussian noise (mean 1, variance p / (1 - p)) on the non-recurrent connections.'''
    name = "gauss"
    fused = False  # the per-layer path: the one-call nn.LSTM path would put its own Bernoulli dropout between layers

    def _noise(self, x, training):
        if not training or self.p == 0:
            return x
        return x * (1 + torch.randn_like(x) * (self.p / (1 - self.p)) ** 0.5)

    def begin(self, x, num_layers, hidden_size, training):  # once per forward pass -> `masks` (or None)
        return None
    def drop_input(self, x, training, masks):             # input -> layer 1, x (B, T, D)
        return self._noise(x, training)
    def drop_between(self, x, training, masks, layer):    # layer l-1 -> layer l
        return self._noise(x, training)
    def drop_output(self, x, training, masks):            # top layer -> output
        return self._noise(x, training)
    # recurrent_weight(w_hh, training): W_hh for this pass (DropConnect, as weightdrop);
    # recurrent_mask(h, steps, training, masks, layer): a (T, B, H) mask on h_{t-1}, or None;
    # zoneout_masks(h, steps, training): keep probabilities of c and h. Either of the last two needs fused = False."""


def test_a_scheme_of_ones_own_through_user_dir_trains_lists_and_clashes_clearly(tmp_path, tiny_ptb):
    """The example of docs/extending.md, verbatim: a --user-dir scheme trains, reports and is listed; a second
    file registering the same name is an error naming both files."""
    user = tmp_path / "my_schemes"
    user.mkdir()
    (user / "gauss.py").write_text(GAUSS)
    out = tmp_path / "out"
    result = run_cli("--user-dir", str(user), "--task", "lm", "--preset", "tiny", "--variants", "none,gauss",
                     "--data-dir", str(tiny_ptb), "--custom-data", "--out", str(out), "--run-dir", str(tmp_path / "r"),
                     "--no-progress", "--device", "cpu", "--no-tensorboard")
    assert result.returncode == 0, result.stderr
    assert [e["variant"] for e in json.loads((out / "lm" / "tiny.json").read_text())] == ["gauss", "none"]
    listing = run_cli("--user-dir", str(user), "--list").stdout
    assert f"gauss (from {user / 'gauss.py'})" in listing
    (user / "copy_of_gauss.py").write_text(GAUSS)
    clash = run_cli("--user-dir", str(user), "--list")
    assert clash.returncode != 0
    assert "dropout scheme 'gauss' is registered twice" in clash.stderr and "rename one of them" in clash.stderr
    assert str(user / "gauss.py") in clash.stderr and str(user / "copy_of_gauss.py") in clash.stderr


@pytest.mark.parametrize("source, where, what", [
    ("import core\nx = (\n", ":2", "SyntaxError"),
    ("import core\n\ny = undefined_name + 1\n", ":3", "NameError: name 'undefined_name' is not defined"),
])
def test_a_user_file_that_does_not_import_is_one_error_naming_its_line(tmp_path, source, where, what):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "broken.py").write_text(source)
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--user-dir", str(folder), "--task", "lm",
                             "--preset", "tiny"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{folder / 'broken.py'}{where}: {what}" in result.stderr.strip().splitlines()[-1]


def test_a_preset_misspelt_gets_a_did_you_mean():
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--task", "lm", "--preset", "tny"], cwd=ROOT,
                            capture_output=True, text=True)
    assert "--preset 'tny' is not a preset of task lm (did you mean 'tiny'?)" in result.stderr
