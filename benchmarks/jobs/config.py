"""What one table's runs share: a preset's config with the command's overrides (--set, --epochs, --p), grid
points and the name of a run's folder (the table's label: benchmarks.tables.labels)."""
from benchmarks.tables.labels import P_BY_HAND
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
        try:
            rates = parse_point(point)
        except ValueError as err:
            raise ValueError(f"--p {item}: {err}") from None
        if rates[1] is not None and scheme != "zoneout":
            raise ValueError(f"--p {item}: a cell rate is zoneout's alone")
        fixed[scheme] = rates
    return fixed


def parse_point(text):
    """A scheme's rate as --p and --grid give it: "0.2" -> (0.2, None); "0.05/0.5" -> (0.05, 0.5) (zoneout's
    hiddens / cells). A ValueError for anything else or a rate outside (0, 1): p=0 is the `none` run."""
    p, _, cell = text.strip().partition("/")
    try:
        point = (float(p), float(cell) if cell else None)
    except ValueError:
        raise ValueError(f"bad rate {text!r}: give a p like 0.2, or P/PC like 0.05/0.5 for zoneout") from None
    if not all(0 < v < 1 for v in point if v is not None):
        raise ValueError(f"bad rate {text!r}: rates must be in (0, 1)")
    return point


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


def check_preset(task_cls, preset):
    """A ValueError naming the task's presets (and the nearest one) when `preset` is none of them."""
    if preset not in task_cls.presets:
        raise ValueError(f"--preset {preset!r} is not a preset of task {task_cls.name}"
                         f"{did_you_mean([preset], task_cls.presets)}; choose one of: {', '.join(task_cls.presets)}")


def preset_p(config, variant):
    """The (p, zoneout cell) the preset fixes for `variant`, or None (the plan then chooses it on validation):
    zaremba and naive (the paper's foil) take the preset's `dropout`, the others their `scheme_dropout` entry.
    benchmarks.jobs.runner.run_config applies it to every run, the plan to its jobs."""
    per_scheme = config.get("scheme_dropout") or {}
    if variant in per_scheme:
        chosen = per_scheme[variant]
        return (chosen, None) if isinstance(chosen, (int, float)) else tuple(chosen)
    if variant in ("zaremba", "naive") and config.get("dropout"):
        return (config["dropout"], None)
    return None


def preset_config(task_cls, preset, epochs=None, overrides=None):
    """The preset's config with --set overrides and --epochs: what every run of one table shares."""
    config = {**task_cls.presets[preset], **(overrides or {})}
    return {**config, **({"epochs": epochs} if epochs is not None else {})}


def run_name(variant, dropout, seed):
    """The folder of one run under <run-dir>/<task>/<label>/."""
    return f"{variant}-p{dropout:g}-seed{seed}"


def p_source(task_cls, args, variant):
    """Where a run's p comes from, as its table says it: 'preset', P_BY_HAND or '--dropout'."""
    if variant == "none":
        return "none"
    if variant in getattr(args, "fixed_p", {}):
        return getattr(args, "p_from", {}).get(variant, P_BY_HAND)
    return "--dropout" if args.dropout is not None else "preset"
