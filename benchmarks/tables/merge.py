"""How runs join a results table: nothing is dropped or replaced without a line saying so.

A table holds one run per (variant, p, seed) (ensembles: one per variant and p). A new run of the same key
replaces the old one, and the replacement is reported; a run whose config differs from the table's (beyond
variant, p and seed) is refused with both configs named, so two different experiments never share a row.
"""
import json
from pathlib import Path

from benchmarks.tables.format import p_text

SEED_KEYS = ("scheme", "dropout", "seed", "zoneout_cell")  # what may differ between the runs of one table
CONFIG_DEFAULTS = {"precision": "fp32", "embed_dropout": 0.0}  # settings added later: runs recorded before them had these values


def read_json(path, default=()):
    """A JSON file written by this suite (`default` when it does not exist); a ValueError naming the file and the
    fix when it is not readable JSON (binary garbage, a cut write)."""
    path = Path(path)
    if not path.exists():
        return list(default)
    if folder_in_the_way(path):
        raise ValueError(folder_in_the_way(path))
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is damaged: not readable JSON ({err}). {_FIX.format(path=path)}") from None


def folder_in_the_way(path):
    """The error for a folder standing where a results file goes, or '' (none does)."""
    if not Path(path).is_dir():
        return ""
    return f"{path} is a folder where a results file belongs: move it away (or pick another --out); nothing was written"


_FIX = ("Restore it (from version control, e.g. git checkout -- {path}, or a backup) or move it away; nothing was "
        "written. A run dir's result.json holds its run: the benchmarks.run command that trained it, again with "
        "--resume, writes it into a new table without training again")
RUN_FIELDS = {"variant": str, "metrics": dict, "config": dict, "history": list, "provenance": dict,
              "wall_s": (int, float)}  # every field a renderer reads


def neighbour_text(err):
    """A damaged table's error as a reader that leaves it out says it: what is wrong, and the fix, without the
    writer's 'nothing was written'."""
    what = str(err).split(". Restore it", 1)[0].removesuffix("; nothing was written")
    if "move it away" in what:  # a folder in the way names its fix already
        return what
    return f"{what}: restore it (e.g. from version control) or move it away"


def load_runs(path):
    """The runs of a results table ([] when it does not exist), each checked for the fields every reader needs:
    damage is one ValueError naming the file, the run and the fix, before anything is trained or written."""
    runs = read_json(path)
    if not isinstance(runs, list):
        raise ValueError(f"{path} is damaged: a results table is a JSON list of runs, this holds "
                         f"{type(runs).__name__}. {_FIX.format(path=path)}")
    for i, run in enumerate(runs):
        missing = [k for k, kind in RUN_FIELDS.items() if not isinstance(run, dict) or not isinstance(run.get(k), kind)]
        if not missing and not isinstance(run.get("dropout", run["config"].get("dropout")), (int, float)):
            missing = ["dropout"]
        if missing or "seed" not in run:
            raise ValueError(f"{path} is damaged: run {i + 1} of {len(runs)} lacks {', '.join(missing or ['seed'])} "
                             f"(or has the wrong type). {_FIX.format(path=path)}")
    return runs


PAPER_ORDER = ("none", "zaremba", "naive", "variational", "weightdrop", "zoneout")  # the paper's comparison first


def variant_order(variant):
    """Sort key of a variant: the paper's comparison (none, zaremba) first, then its successors, then others."""
    return (PAPER_ORDER.index(variant) if variant in PAPER_ORDER else len(PAPER_ORDER), variant)


def singles(runs):
    """The single-model runs: ensembles (`--ensemble N`) have no training history nor examples of their own."""
    return [run for run in runs if not run.get("ensemble")]


def run_key(run):
    return run["variant"], run["dropout"], bool(run.get("ensemble")), run["seed"] or 0


def who(run):
    """'zaremba p=0.3 seed 2' (or '... ensemble')."""
    return f"{run['variant']} p={p_text(run)} " + ("ensemble" if run.get("ensemble") else f"seed {run['seed']}")


def _config(run, leave_out=("seed",)):
    """The run's config, with the defaults of settings added later, without the keys `leave_out`."""
    return {k: v for k, v in {**CONFIG_DEFAULTS, **run.get("config", {})}.items() if k not in leave_out}


def _differing(a, b):
    """The keys two configs disagree on (a key one of them lacks counts as "<unset>")."""
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def config_gap(a, b, allowed=()):
    """The config keys two runs disagree on besides variant, p, seed and the keys `allowed` (what is compared)."""
    return _differing(_config(a, SEED_KEYS + tuple(allowed)), _config(b, SEED_KEYS + tuple(allowed)))


def config_difference(a, b):
    """'key: A vs B; ...' for the config keys two runs disagree on (seed aside), or ''."""
    ca, cb = _config(a), _config(b)
    return "; ".join(f"{k}: {ca.get(k, '<unset>')!r} vs {cb.get(k, '<unset>')!r}" for k in _differing(ca, cb))


def merge_log(old, new, old_source="the table", sources=None):
    """Merge `new` runs (from `sources`, one name per run) into `old` (from `old_source`).

    Returns (runs ordered by variant then seed, {"added", "replaced", "refused": [lines]}). A run of an existing
    key replaces it (a run re-reported with the same training history, e.g. evaluated again with --mc-samples,
    keeps its training record); a run of an existing key but another config is refused, naming both."""
    merged = {run_key(r): (r, old_source) for r in old}
    log = {"added": [], "replaced": [], "refused": []}
    for run, source in zip(new, sources or ["the new runs"] * len(new)):
        was, was_source = merged.get(run_key(run), (None, None))
        if was is not None and config_difference(was, run):
            log["refused"].append(f"{who(run)} from {source}: its config differs from the same run in {was_source} "
                                  f"({config_difference(was, run)}); give it its own table (--set ... gives a new "
                                  f"label) or remove one of them")
            continue
        if was is None:
            log["added"].append(f"{who(run)} from {source}")
        else:
            same = bool(was.get("history")) and was["history"] == run.get("history")
            run = {**run, **{k: was[k] for k in ("provenance", "wall_s", "finished") if same and k in was}}
            if not same:
                log["replaced"].append(f"{who(run)}: the run in {was_source} (finished {was.get('finished', '?')}) "
                                       f"by the one from {source} (finished {run.get('finished', '?')})")
        merged[run_key(run)] = (run, source)
    return sorted((r for r, _ in merged.values()), key=run_key), log


def merge_runs(old, new):
    """merge_log without the log (clashing runs are left out: check them first with merge_log)."""
    return merge_log(old, new)[0]


def check_consistent(runs, where="this table"):
    """Runs of one table must share their config except variant, p and seed; raise a ValueError naming the keys
    that differ otherwise (e.g. a bf16 seed merged into fp32 runs, or a preset edited between commands)."""
    base, rates = None, {}
    for run in runs:
        rate = rates.setdefault((run["variant"], run.get("dropout", run["config"].get("dropout"))), p_text(run))
        if rate != p_text(run):
            raise ValueError(f"cannot merge runs with different configs into {where}: {run['variant']} with "
                             f"{rate} and with {p_text(run)}. Put them in separate tables (--set gives a new label)")
        config = _config(run, SEED_KEYS)
        if base is None:
            base, first = config, run
            continue
        differ = _differing(base, config)
        if differ:
            what = "; ".join(f"{k}: {base.get(k, '<unset>')!r} ({_who(first)}) vs {config.get(k, '<unset>')!r} "
                             f"({_who(run)})" for k in differ)
            raise ValueError(f"cannot merge runs with different configs into {where}: {what}. Put them in separate "
                             f"tables (--set / --epochs give a new label) or re-run them with one config")


def _who(run):
    return f"{run['variant']} seed {run['seed']}" if not run.get("ensemble") else f"{run['variant']} ensemble"
