"""What one table's runs share: a preset's config with the command's overrides (--set, --epochs, --p), and the
label that names the table and the run dirs. Used by benchmarks.run, benchmarks.select and benchmarks.plan."""
from core.utils import did_you_mean


OPTIONAL_KEYS = {"zoneout_cell": None}  # settable on every preset with --set: key -> its value when unset


def declared_keys(task_cls):
    """Every config key the task reads: its own and the trainer's (sorted, for the error message)."""
    from tasks.base import COMMON_KEYS

    return sorted(set(task_cls.config_keys) | COMMON_KEYS)


# config keys that a flag of their own sets: --set names the flag instead
FLAG_KEYS = {"epochs": "--epochs N", "dropout": "--dropout P (or --p SCHEME=P)", "seed": "--seeds",
             "scheme": "--variants", "precision": "--precision", "ensemble": "--ensemble N",
             "scheme_dropout": "--p SCHEME=P,... (each scheme's p; benchmarks.grid chooses it on validation)",
             "cuda_graphs": "--cuda-graphs"}


def parse_overrides(items, preset, name, parser, declared=()):
    """KEY=VALUE strings -> {key: value}, each value read as the type of the preset's own value. Any key the task
    declares (`declared`: its config keys) may be set, also where the preset leaves it out (read as a number or
    text); a key that a flag sets names that flag."""
    known = {**{k: None for k in declared}, **OPTIONAL_KEYS, **preset}
    preset, overrides = known, {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        if key in FLAG_KEYS:
            parser.error(f"--set {key}: use {FLAG_KEYS[key]}")
        if key not in preset:
            parser.error(f"--set {key}: preset {name} has no key {key!r}{did_you_mean([key], preset)}; its keys: "
                         f"{', '.join(preset)}")
        current = preset[key]
        try:
            if text == "None":
                value = None
            elif isinstance(current, bool):
                value = {"true": True, "false": False}[text.lower()]
            elif isinstance(current, (int, float)):
                value = type(current)(text)
            elif current is None:  # unset: a limit (max_vocab) reads as a number, a path or name as text
                value = _number_or_text(text)
            else:
                value = text
        except (KeyError, ValueError):
            parser.error(f"--set {key}={text}: expected a {type(current).__name__} like {current!r}")
        overrides[key] = value
    return overrides


def set_flag_named(err, overrides):
    """A config check's message, naming --set where the key it is about was set by that flag."""
    if str(err).split(" ", 1)[0] in overrides:
        return f"--set {err}"
    return str(err)


def parse_fixed_p(text, variants):
    """'zaremba=0.3,zoneout=0.05/0.5' -> {"zaremba": (0.3, None), "zoneout": (0.05, 0.5)}; a ValueError naming
    the flag for a scheme not trained, a bad rate or a rate for `none`."""
    fixed = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        scheme, sep, point = item.strip().partition("=")
        if not sep:
            raise ValueError(f"--p takes SCHEME=P items, e.g. zaremba=0.3, got {item!r}")
        if scheme not in variants:
            raise ValueError(f"--p {item}: {scheme!r} is not in --variants ({', '.join(variants)})")
        if scheme == "none":
            raise ValueError("--p: 'none' has no dropout; give p for the other schemes")
        p, _, cell = point.partition("/")
        try:
            rates = (float(p), float(cell) if cell else None)
        except ValueError:
            raise ValueError(f"--p {item}: give a rate like 0.3 (zoneout: 0.05/0.5)") from None
        if not all(0 < r < 1 for r in rates if r is not None):
            raise ValueError(f"--p {item}: rates must be in (0, 1)")
        if rates[1] is not None and scheme != "zoneout":
            raise ValueError(f"--p {item}: a cell rate is zoneout's alone")
        fixed[scheme] = rates
    return fixed


def parse_seeds(text, flag="--seeds"):
    """'1,2,3' -> [1, 2, 3]; a ValueError naming the flag for a non-integer, an empty list, a negative seed or a
    seed given twice. Seed 0 is a seed like any other (speech's cpu preset: the dev fold)."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of integers, got {text!r}") from None
    if not seeds:
        raise ValueError(f"{flag} is empty")
    if min(seeds) < 0:
        raise ValueError(f"{flag} {text}: seeds are integers >= 0, got {min(seeds)}")
    check_distinct(seeds, flag)
    return seeds


def check_distinct(values, flag):
    """A ValueError naming the flag and the first value it gives twice: each value is one run dir (or job), so a
    repeat would train into the same folder twice, or wait on its own lock."""
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise ValueError(f"{flag} gives {repeated[0]} twice: name each once")


def _number_or_text(text):
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def table_label(task_cls, preset, epochs=None, dropout=None, overrides=None, precision="fp32", valid_only=False,
                device=None):
    """The name of the results table of a preset's runs with these overrides: <preset>[-e<N>][-p<P>][-KEY=VALUE]
    [-<precision>[-cpu]][-select]. bf16 runs on a CPU (`device`) get a table of their own: oneDNN's bf16 kernels
    are not a GPU's, and the same seeds would otherwise replace each other."""
    label = preset
    if epochs is not None and epochs != task_cls.presets[preset]["epochs"]:
        label += f"-e{epochs}"
    if dropout is not None and dropout != task_cls.presets[preset]["dropout"]:
        label += f"-p{dropout:g}"
    for key, value in (overrides or {}).items():
        label += f"-{key}={value}".replace("/", "_").replace(" ", "_")  # a path must not open folders
    if precision != "fp32":
        label += f"-{precision}"  # never merged with fp32 runs
    if precision == "bf16" and str(device).split(":")[0] == "cpu":
        label += "-cpu"
    if valid_only:
        label += "-select"  # selection runs never share a table with runs that report test numbers
    return label


def check_preset(task_cls, preset):
    """A ValueError naming the task's presets (and the nearest one) when `preset` is none of them."""
    if preset not in task_cls.presets:
        raise ValueError(f"--preset {preset!r} is not a preset of task {task_cls.name}"
                         f"{did_you_mean([preset], task_cls.presets)}; choose one of: {', '.join(task_cls.presets)}")


# what table_label appends for a precision, and how a table says it
PRECISION_SUFFIXES = {"-tf32": "TF32 matmuls", "-bf16": "its forward passes under bf16 autocast",
                      "-bf16-cpu": "its forward passes under bf16 autocast on a CPU"}


def paper_label(label):
    """The paper's name for a table: its label without a precision suffix ("medium-bf16-cpu" -> "medium"), since
    precision is the one thing such a table changes of the preset; any other label as it is."""
    for suffix in sorted(PRECISION_SUFFIXES, key=len, reverse=True):  # -bf16-cpu before -bf16
        if label.endswith(suffix):
            return label.removesuffix(suffix)
    return label


def preset_config(task_cls, preset, epochs=None, overrides=None):
    """The preset's config with --set overrides and --epochs: what every run of one table shares."""
    config = {**task_cls.presets[preset], **(overrides or {})}
    return {**config, **({"epochs": epochs} if epochs is not None else {})}


def run_name(variant, dropout, seed):
    """The folder of one run under <run-dir>/<task>/<label>/."""
    return f"{variant}-p{dropout:g}-seed{seed}"


def p_source(task_cls, args, variant):
    """Where a run's p comes from, as its table says it: 'preset', 'set by hand (--p)' or '--dropout'."""
    if variant == "none":
        return "none"
    if variant in getattr(args, "fixed_p", {}):
        return getattr(args, "p_from", {}).get(variant, "set by hand (--p)")
    return "--dropout" if args.dropout is not None else "preset"
