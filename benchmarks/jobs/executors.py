"""Where a plan's jobs run: one interface, `submit(argv, log) -> handle` with `handle.poll()` (None while running,
else the exit status) and `handle.stop()`, in the manner of submitit.

- `local` (default): each job a `benchmarks.run` subprocess on this machine; it stops (saving its checkpoint) when
  the command that started it dies, however it dies.
- `slurm` / `submitit-local`: each job submitted through submitit (SLURM on a cluster; submitit's LocalExecutor
  for a run on this machine through the same path). Install with `pip install -e ".[cluster]"`.
"""
import os
import signal
import subprocess
from pathlib import Path

from benchmarks.jobs.runner import runner_command
from core.interrupt import ENV_STOP_WITH_PARENT

EXECUTORS = ("local", "slurm", "submitit-local")


def run_job(argv, log, cwd):
    """Run `python -m benchmarks.run ARGV` in `cwd` with its output in `log`; its exit status. What a submitit
    job executes (on the cluster node, with that node's python)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.call(runner_command(argv), cwd=cwd, stdout=f,
                               stderr=subprocess.STDOUT)


class LocalJob:
    def __init__(self, argv, log):
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:  # the child keeps its own copy of the descriptor
            # its own session: a Ctrl-C at the terminal (or `timeout`'s signal to its group) reaches the grid alone,
            # which passes one SIGTERM on; a second signal would stop the run without its checkpoint
            self.process = subprocess.Popen(runner_command(argv), stdout=f,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, ENV_STOP_WITH_PARENT: str(os.getpid())})

    def poll(self):
        return self.process.poll()

    def stop(self):
        """Ask the run to save its checkpoint and stop (SIGTERM); `--resume` continues it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self):
        return self.process.wait()


class LocalExecutor:
    name = "local"

    def submit(self, argv, log):
        return LocalJob(argv, log)


class SubmititJob:
    def __init__(self, job):
        self.job = job

    def poll(self):
        if not self.job.done():
            return None
        try:
            return self.job.result()
        except Exception:  # submitit raises the job's failure (a crash of the node, a timeout) as an exception
            return 1

    def stop(self):
        self.job.cancel(check=False)

    def wait(self):
        return self.job.wait() or self.poll()


class SubmititExecutor:
    """Jobs through submitit: `cluster` "slurm" on a SLURM cluster, "local" for submitit's LocalExecutor.
    `parameters`: submitit's generic ones (timeout_min, cpus_per_task, gpus_per_node, mem_gb) and slurm_* ones
    (slurm_partition, ...)."""

    def __init__(self, folder, cluster, parameters):
        try:
            import submitit
        except ImportError:
            raise ValueError("--executor slurm / submitit-local need submitit: pip install -e \".[cluster]\" "
                             "(or pip install submitit)") from None
        self.name = "slurm" if cluster == "slurm" else "submitit-local"
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.executor.update_parameters(**parameters)
        self.cwd = os.getcwd()

    def submit(self, argv, log):
        return SubmititJob(self.executor.submit(run_job, list(argv), str(Path(log).absolute()), self.cwd))


def make_executor(name, folder, parameters):
    if name == "local":
        return LocalExecutor()
    return SubmititExecutor(folder, "slurm" if name == "slurm" else "local", parameters)
