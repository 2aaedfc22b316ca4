"""DDP on CPU (gloo): 2 processes train like 1 process on the same global batches; resume under 2 processes;
torchrun with 2 "nodes" of 1 process on localhost runs the real runner."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import write_tiny_ptb
from test_mt import tiny_config as mt_config, write_tiny_multi30k
from test_speech import write_tiny_fsdd

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configs(name, scheme):
    from tasks.lm.task import LanguageModelTask
    from tasks.speech.task import SpeechTask

    p = 0.0 if scheme == "none" else 0.3
    if name in ("lm", "lm5"):  # batch 4: the stateful streams split 2 + 2; batch 5: 3 + 2 (unequal shards)
        return dict(LanguageModelTask.presets["tiny"], seed=2, epochs=2, scheme=scheme, dropout=p,
                    **({"batch_size": 5} if name == "lm5" else {}))
    if name == "speech":  # 5 utterances a batch, 3 + 2, of different frame counts
        return dict(SpeechTask.presets["tiny"], seed=1, epochs=2, scheme=scheme, dropout=p, batch_size=5)
    return mt_config(epochs=2, scheme=scheme, dropout=p)


def train(name, data, config, run_dir, resume=False, stop_at=None):
    """One process's part of a run (world size from the environment). Returns the result (rank 0) or None."""
    from core import Trainer, TrainConfig, distributed
    from core.utils import seed_everything
    from tasks.lm.task import LanguageModelTask
    from tasks.mt.task import TranslationTask
    from tasks.speech.task import SpeechTask

    torch.set_num_threads(1)
    cls = {"lm": LanguageModelTask, "lm5": LanguageModelTask, "speech": SpeechTask}.get(name, TranslationTask)
    task = cls(config, data, download=False, custom_data=True, cache_dir=Path(data) / "cache").load_data()
    seed_everything(config["seed"])
    trainer = Trainer(task, task.build_model(), TrainConfig.from_dict(config), run_dir, "cpu", progress=False)
    rows, forward = {"train": 0}, task.forward

    def counting_forward(model, batch, state):
        rows["train"] += batch[0].size(0) if model.training else 0
        return forward(model, batch, state)

    task.forward = counting_forward
    if stop_at is not None and distributed.rank() == 1:  # a signal reaches one rank only
        original, calls = trainer.train_step, {"n": 0}

        def train_step(batch, state=None):
            calls["n"] += 1
            if calls["n"] == stop_at:
                trainer.stop_requested = True
            return original(batch, state)

        trainer.train_step = train_step
    result = trainer.fit(resume=resume)
    return None if result is None else {**result, "rows_trained": rows["train"]}


def _worker(rank, world, port, args, out):
    from core import distributed
    from core.interrupt import Interrupted

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    distributed.init_from_env("cpu")
    try:
        result = train(*args)
    except Interrupted:
        result = {"interrupted": True}
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def run_parallel(world, args, tmp_path):
    out = tmp_path / f"result-{free_port()}.json"
    mp.spawn(_worker, args=(world, free_port(), args, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def data_for(name, tmp_path):
    if name == "speech":
        return write_tiny_fsdd(tmp_path / "fsdd")
    return write_tiny_ptb(tmp_path / "ptb") if name.startswith("lm") else write_tiny_multi30k(tmp_path / "m30k")


@pytest.mark.parametrize("name", ["lm", "mt", "lm5", "speech"])
def test_two_processes_train_like_one_on_the_same_global_batches(name, tmp_path):
    """lm5 and speech shard unequally (3 + 2 rows; frame counts differ), so ranks that average their losses
    plainly instead of weighting them by their share of the global batch fail here."""
    data, config = data_for(name, tmp_path), configs(name, "none")
    single = train(name, data, config, tmp_path / "one")
    double = run_parallel(2, (name, data, config, tmp_path / "two"), tmp_path)
    for a, b in zip(single["history"], double["history"]):
        for key in a:
            if key.startswith(("train_", "valid_")):
                assert b[key] == pytest.approx(a[key], rel=1e-4), key
    for key, value in single["metrics"].items():
        assert double["metrics"][key] == pytest.approx(value, rel=1e-4), key
    if name in ("lm", "mt"):
        assert double["rows_trained"] == single["rows_trained"] // 2  # rank 0 trained on its half of every batch
    else:  # rank 0 trained on the larger part (3 of 5 rows) of every batch
        assert single["rows_trained"] / 2 < double["rows_trained"] < single["rows_trained"]


def test_resume_under_two_processes_repeats_the_uninterrupted_run(tmp_path):
    data, config = data_for("mt", tmp_path), configs("mt", "zaremba")  # dropout: per-rank RNG streams
    full = run_parallel(2, ("mt", data, config, tmp_path / "full"), tmp_path)
    assert run_parallel(2, ("mt", data, config, tmp_path / "cut", False, 4), tmp_path) == {"interrupted": True}
    resumed = run_parallel(2, ("mt", data, config, tmp_path / "cut", True), tmp_path)
    assert resumed["metrics"] == full["metrics"]


def test_torchrun_two_nodes_on_localhost_runs_the_runner(tmp_path):
    data = write_tiny_ptb(tmp_path / "ptb")
    port = free_port()
    common = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
              "-m", "benchmarks.run", "--task", "lm", "--preset", "tiny", "--variants", "none", "--epochs", "1",
              "--data-dir", str(data), "--custom-data", "--out", str(tmp_path / "out"), "--run-dir",
              str(tmp_path / "runs"), "--no-progress", "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--node_rank", str(r), *common],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs
    runs = json.loads((tmp_path / "out" / "lm" / "tiny-e1.json").read_text())
    assert [r["provenance"]["world_size"] for r in runs] == [2]
    assert "x 2 processes (torchrun, DDP)" in (tmp_path / "out" / "lm" / "tiny-e1.md").read_text()


def test_a_failing_rank_stops_the_others_with_its_error(tmp_path):
    data = write_tiny_ptb(tmp_path / "ptb")
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RNNREG_DIST_TIMEOUT_S": "20"}
    nodes = []
    for node, data_dir in ((0, data), (1, tmp_path / "missing")):  # the second node has no data
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
             str(node), "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "benchmarks.run", "--task",
             "lm", "--preset", "tiny", "--variants", "none", "--data-dir", str(data_dir), "--custom-data",
             "--no-download", "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "runs"), "--no-progress",
             "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode != 0 for node in nodes), logs
    assert "missing" in logs[1] and "error" in logs[1].lower()
    assert not (tmp_path / "out" / "lm").exists()
