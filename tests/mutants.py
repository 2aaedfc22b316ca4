"""Deliberate mistakes that the test suite must catch.

    python tests/mutants.py            # apply each mistake to a copy of the repository, run its tests, expect a failure
    python tests/mutants.py --list     # what each mistake is

Each mutant edits a copy of the tracked files (never this checkout) and runs the test files named with it;
a mutant that leaves them passing is a hole in the suite, and the script exits with 1.
`tests/test_mutants.py` checks on every test run that each edit still applies to today's code.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, [(old, new), ...], test files that must fail)
MUTANTS = {
    "no run-dir lock (double launch)": ("benchmarks/jobs/flags.py", [
        ("        return [lock_run_dir(d) for dirs in planned.values() for d in dirs]", "        return []"),
    ], ["tests/test_faults.py"]),
    "torch.save straight to the file (full disk: no cause named)": ("core/utils.py", [
        ("    buffer = io.BytesIO()\n    torch.save(obj, buffer)\n    atomic_write(path, lambda f: f.write(buffer.getbuffer()), mode=\"wb\")",
         "    atomic_write(path, lambda f: torch.save(obj, f), mode=\"wb\")"),
    ], ["tests/test_faults.py"]),
    "torch's compiler imported at the first optimizer (its refused temporary file names nothing)": (
        "benchmarks/jobs/flags.py", [("    keep_freed_memory()\n    import_torch_compiler()\n", "    keep_freed_memory()\n")],
        ["tests/test_faults.py"]),
    "damaged tables not checked": ("benchmarks/tables/merge.py", [
        ("    for i, run in enumerate(runs):\n        missing", "    for i, run in enumerate(runs[:0]):\n        missing"),
    ], ["tests/test_faults.py"]),
    "a folder where the table goes read as a table (IsADirectoryError)": ("benchmarks/tables/merge.py", [
        ("    if folder_in_the_way(path):\n        raise ValueError(folder_in_the_way(path))\n", ""),
    ], ["tests/test_faults.py"]),
    "the runner trains with a folder where its table's .md goes": ("benchmarks/jobs/runner.py", [
        ("        if folder_in_the_way(path):\n            raise ValueError", "        if False:\n            raise ValueError"),
    ], ["tests/test_faults.py"]),
    "a log append the kernel cuts short leaves its torn line": ("core/monitor.py", [
        ("            f.truncate(start)\n", ""),
    ], ["tests/test_faults.py"]),
    "a log's torn last line is appended to": ("core/monitor.py", [
        ("            if not self.appended:\n                drop_torn_line(path)\n", ""),
    ], ["tests/test_faults.py"]),
    "writes ignore the umask": ("core/utils.py", [
        ("        os.chmod(tmp, 0o666 & ~_umask())\n", ""),
    ], ["tests/test_faults.py"]),
    "malloc hands freed blocks back (trim threshold left low)": ("core/allocator.py", [
        ("TRIM_THRESHOLD = 2**30 ", "TRIM_THRESHOLD = 2**17 "),
    ], ["tests/test_allocator.py"]),
    "big tensors still mmapped (mmap threshold left low)": ("core/allocator.py", [
        ("MMAP_THRESHOLD = 32 * 2**20 ", "MMAP_THRESHOLD = 2**17 "),
    ], ["tests/test_allocator.py"]),
    "speed peers take the first scheme's p (none: p=0)": ("benchmarks/speed.py", [
        ('impls.update(peer_jobs(task, config["dropout"], batches', 'impls.update(peer_jobs(task, task.config["dropout"], batches'),
    ], ["tests/test_speed.py"]),
    "table merge without its lock": ("core/locks.py", [
        ("        fcntl.flock(fd, fcntl.LOCK_EX)\n        _claim(fd)\n        yield", "        yield"),
    ], ["tests/test_grid.py"]),
    "seed jobs start before their p is chosen": ("benchmarks/jobs/plan.py", [
        ("            after = [i for i, j in enumerate(jobs) if j.kind == \"select\" and j.choice == job.choice]",
         "            after = []"),
    ], ["tests/test_grid.py"]),
    "fused loss: softmax gradient without the one-hot": ("core/loss.py", [
        ("                grad.scatter_add_(1, index, -counted.to(softmax_dtype).unsqueeze(1))\n", ""),
    ], ["tests/test_loss.py"]),
    "fused loss: padded rows get a gradient": ("core/loss.py", [
        ("                grad.mul_(counted.unsqueeze(1))\n", ""),
    ], ["tests/test_loss.py"]),
    "fused loss: backward ignores grad_output": ("core/loss.py", [
        ("        scale = grad_nll.to(hidden.dtype) if hidden.dtype == torch.float64 else grad_nll",
         "        scale = 1.0"),
    ], ["tests/test_loss.py"]),
    "bf16 recurrence: the step's product without h": ("core/recurrence.py", [
        ("gate = torch.add(pre[t], torch.mm(inputs_h[t], w_t), out=gates[t])", "gate = gates[t].copy_(pre[t])"),
    ], ["tests/test_recurrence.py"]),
    "bf16 masks: not rescaled by 1 / (1 - p)": ("core/schemes.py", [
        ("    return keep.to(like.dtype if like.is_floating_point() else torch.float32) * (1 / (1 - p))",
         "    return keep.to(like.dtype if like.is_floating_point() else torch.float32)"),
    ], ["tests/test_schemes.py"]),
    "runs from uncommitted code pass without a reason": ("benchmarks/tables/uncommitted.py", [
        ("            if is_dirty(record) and not reasons", "            if False and not reasons"),
    ], ["tests/test_results_provenance.py"]),
    "selection picks between machines within a seed's spread": ("benchmarks/tables/machines.py", [
        ("        close = [r for r in grid if machine_key(r.get(\"provenance\", {})) != mine",
         "        close = [r for r in grid if False"),
    ], ["tests/test_select.py"]),
    "compare pairs runs across machines silently": ("benchmarks/compare.py", [
        ("    if crossed and not across_machines:", "    if False:"),
    ], ["tests/test_compare.py"]),
    "compare pairs runs of other code silently": ("benchmarks/compare.py", [
        ("        if \"git_commit\" in a and \"git_commit\" in b and (code_of(a) is None",
         "        if False and (code_of(a) is None"),
    ], ["tests/test_compare.py"]),
    "grid --rerun keeps rows of other commits": ("benchmarks/jobs/plan.py", [
        ("    same_code = recorded == commit or (", "    same_code = True or ("),
    ], ["tests/test_grid.py"]),
    "a row without history passes the check and breaks the render after training": ("benchmarks/tables/merge.py", [
        ('"history": list, "provenance": dict,', '"provenance": dict,'),
    ], ["tests/test_faults.py"]),
    "a signal cuts a table write in half": ("core/interrupt.py", [
        ('    if not _SIGNALS["deferring"]:\n        raise Stopped(signum)', '    raise Stopped(signum)'),
    ], ["tests/test_signals.py"]),
    "edited --user-dir code goes unnoticed": ("benchmarks/jobs/plan.py", [
        ("    older = _user_defined(job) and recorded_user_code(", "    older = False and recorded_user_code("),
    ], ["tests/test_grid.py"]),
    "a damaged neighbour table fails the overview": ("benchmarks/tables/overview.py", [
        ("            except ValueError as err:  # a damaged neighbour", "            except KeyError as err:  # a damaged neighbour"),
    ], ["tests/test_report.py"]),
    "no inter-layer dropout": ("core/lstm.py", [
        ("between = self.scheme.between_p if num_layers > 1 else 0.0", "between = 0.0"),
        ("layer_input = scheme.drop_between(layer_input, training, masks, layer)", "layer_input = layer_input"),
    ], ["tests/test_lstm.py"]),
    "dropout on h_{t-1} in zaremba": ("core/schemes.py", [
        ("(T, B, H); h is h_0 (for shape).\"\"\"\n        return None\n",
         "(T, B, H); h is h_0 (for shape).\"\"\"\n        return dropout(h.new_ones(steps, *h.shape), self.p, training)\n"),
    ], ["tests/test_lstm.py"]),
    "source not reversed": ("tasks/mt/task.py", [
        ("reverse = torch.where(positions < lengths, lengths - 1 - positions, positions)",
         "reverse = positions.expand_as(src)"),
    ], ["tests/test_mt.py"]),
    "finished hypotheses dropped by the beam": ("core/beam.py", [
        ("finished.add(alive[a], float(top_scores[a, r]), prefixes[a, top_parent[a, r]].tolist())", "pass"),
    ], ["tests/test_beam.py"]),
    "beam ranks chunks without their hypothesis' score": ("core/beam.py", [
        ("best = chunks.amax(-1) + scores.repeat_interleave(per_row, dim=1)", "best = chunks.amax(-1)"),
    ], ["tests/test_beam.py"]),
    "decoding keeps the padded output layer of old weights": ("core/beam.py", [
        ("if cached is None or cached[0] != key:", "if cached is None:"),
    ], ["tests/test_beam.py"]),
    "a replayed step reads the batch it was captured with": ("core/graphs.py", [
        ("        for static, new in zip(tree_flatten(static_batch)[0], leaves):\n            static.copy_(new)\n", ""),
    ], ["tests/test_graphs.py"]),
    "a replayed step restarts from its captured state": ("core/graphs.py", [
        ("            if static_state is not None:  # the next replay starts where this one ended\n", "            if False:\n"),
    ], ["tests/test_graphs.py"]),
    "the image step scored in captioning": ("tasks/caption/task.py", [
        ("return self.out(output[:, 1:])", "return self.out(output)"),
        ("targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == self.vocab.pad, IGNORE)",
         "targets = tokens.masked_fill(tokens == self.vocab.pad, IGNORE)"),
    ], ["tests/test_caption.py", "tests/test_caption_model.py"]),
    "normalisation statistics from all splits": ("tasks/speech/task.py", [
        ('self.mean, self.std = normalizer(self.data["train"]["feats"])',
         'self.mean, self.std = normalizer([f for s in SPLITS for f in self.data[s]["feats"]])'),
    ], ["tests/test_speech.py"]),
    "a test-set metric picks the best epoch": ("core/trainer.py", [
        ("score = valid[self.task.main_metric]", 'score = self.evaluate("test")[self.task.main_metric]'),
    ], ["tests/test_trainer.py"]),
    "resume within an epoch forgets the RNG of the moment": ("core/trainer.py", [
        ('torch.set_rng_state(within["rng_ranks"][distributed.rank()] if parallel else within["rng"])', "pass"),
    ], ["tests/test_resume.py"]),
    "resume within an epoch restarts the epoch's batches": ("core/trainer.py", [
        ("            if step <= done:", "            if False:"),
    ], ["tests/test_resume.py"]),
    "DDP ranks train on the whole batch": ("core/distributed.py", [
        ("    if world == 1:\n        return batch\n", "    if True:\n        return batch\n"),
    ], ["tests/test_distributed.py"]),
    "DDP ranks do not weight their losses": ("core/trainer.py", [
        ("(out.loss * (norm / total)).backward()", "out.loss.backward()"),
    ], ["tests/test_distributed.py"]),
    "DDP ranks average their losses plainly (unequal shards weighted alike)": ("core/trainer.py", [
        ("(out.loss * (norm / total)).backward()", "(out.loss / distributed.world_size()).backward()"),
    ], ["tests/test_distributed.py"]),
    "variational redraws its input mask at every step": ("core/schemes.py", [
        ('return x if masks is None else x * masks["input"]', "return dropout(x, self.p, training)"),
    ], ["tests/test_schemes.py"]),
    "variational without its recurrent mask": ("core/schemes.py", [
        ('return None if masks is None else masks["recurrent"][layer]', "return None"),
    ], ["tests/test_schemes.py"]),
    "weightdrop leaves W_hh masked": ("core/schemes.py", [
        ("        return dropout(w_hh, self.p, training)\n",
         "        if training:\n            with torch.no_grad():\n"
         "                w_hh.mul_(torch.rand_like(w_hh).ge(self.p) / (1 - self.p))\n        return w_hh\n"),
    ], ["tests/test_schemes.py"]),
    "zoneout evaluates with the new values, not the expectation": ("core/schemes.py", [
        ("            return h.new_full((), self.p), h.new_full((), self.cell_p)\n", "            return None\n"),
    ], ["tests/test_schemes.py"]),
    "zoneout draws the cells at the hiddens' rate": ("core/schemes.py", [
        ("for rate in (self.p, self.cell_p))", "for rate in (self.p, self.p))"),
    ], ["tests/test_schemes.py"]),
    "a scheme's p chosen from runs that read the test split": ("benchmarks/jobs/selection.py", [
        ('if any(k.startswith("test_") for k in run["metrics"]):', "if False:"),
    ], ["tests/test_select.py"]),
    "--final trains the chosen point again instead of reusing its grid run": ("benchmarks/jobs/selection.py", [
        ("        if not target.exists():\n            shutil.copytree(source, target)\n", ""),
    ], ["tests/test_select.py"]),
    "a grid run in a later session wipes the earlier points of the selection table": ("benchmarks/jobs/selection.py", [
        ("for path in ([earlier] if earlier else []) + tables:", "for path in tables:"),
    ], ["tests/test_select.py"]),
    "MC dropout batches weightdrop's passes, which then share one W_hh mask": ("core/schemes.py", [
        ('    name = "weightdrop"\n    row_masks = False\n', '    name = "weightdrop"\n'),
    ], ["tests/test_ensemble.py"]),
    "MC dropout evaluates with the dropout off": ("tasks/base.py", [
        ("        model.train()\n        try:", "        model.eval()\n        try:"),
    ], ["tests/test_ensemble.py"]),
}


def apply(folder, file, edits):
    path = Path(folder) / file
    text = path.read_text()
    for old, new in edits:
        if text.count(old) != 1:
            raise ValueError(f"{file}: expected exactly one {old!r}, found {text.count(old)}; update tests/mutants.py")
        text = text.replace(old, new)
    path.write_text(text)


def tracked_copy(dest):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith("results/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def run_mutant(name):
    file, edits, tests = MUTANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        tracked_copy(copy)
        apply(copy, file, edits)
        started = time.time()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True)
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
        return proc.returncode != 0, failed[:1], time.time() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("names", nargs="*", help="run only these mutants (default: all)")
    args = parser.parse_args(argv)
    if args.list:
        for name, (file, _, tests) in MUTANTS.items():
            print(f"{name}: edits {file}, must fail {' '.join(tests)}")
        return 0
    holes = 0
    for name in args.names or MUTANTS:
        caught, failed, seconds = run_mutant(name)
        holes += not caught
        print(f"{'caught ' if caught else 'MISSED '} {name} ({seconds:.0f} s){': ' + failed[0] if failed else ''}",
              flush=True)
    print(f"{len(args.names or MUTANTS) - holes} of {len(args.names or MUTANTS)} mistakes caught")
    return 1 if holes else 0


if __name__ == "__main__":
    sys.exit(main())
