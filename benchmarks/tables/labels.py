"""A table's label: <preset>[-e<N>][-p<P>][-KEY=VALUE][-<precision>[-cpu]][-select], made by table_label and
taken apart by parse_label; the runs' folders and the tables' names both come from it."""
import re

SELECT_SUFFIX = "-select"  # the table of a grid's --valid-only runs: <label>-select.json
SELECTION_SUFFIX = "-selection"  # the choice made from them: results/<task>/<label>-selection.{json,md}

# the JSONs beside the task tables in results/<task>/ that hold no runs: what each is
OTHER_TABLES = {"speed": "a speed table (benchmarks.speed)", "mc": "an MC-dropout table (benchmarks.mc)"}

# where a run's p came from, as the runs record it and the tables print it (besides "none" and "preset")
P_BY_HAND = "set by hand (--p)"
P_ON_VALIDATION = "chosen on validation"

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
        label += SELECT_SUFFIX  # selection runs never share a table with runs that report test numbers
    return label


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




LABEL = re.compile(r"^(?P<preset>[^-]+)(?:-e(?P<epochs>\d+))?(?:-p(?P<dropout>[0-9.e]+))?(?P<overrides>(?:-[\w.]+=[^-]+)*)"
                   r"(?P<precision>-tf32|-bf16-cpu|-bf16)?(?P<select>-select)?$")


def parse_label(label):
    """{"preset", "epochs", "dropout", "overrides", "precision", "valid_only"} of a label table_label made
    ("medium-bf16-cpu" -> preset medium, precision bf16, on a CPU); a ValueError for any other name."""
    match = LABEL.match(label)
    if not match:
        raise ValueError(f"{label!r} is not a table label (<preset>[-e<N>][-p<P>][-KEY=VALUE][-<precision>][-select])")
    overrides = dict(item.split("=", 1) for item in match["overrides"].split("-")[1:]) if match["overrides"] else {}
    suffix = match["precision"] or ""
    return {"preset": match["preset"], "epochs": int(match["epochs"]) if match["epochs"] else None,
            "dropout": float(match["dropout"]) if match["dropout"] else None, "overrides": overrides,
            "precision": suffix.removesuffix("-cpu").lstrip("-") or "fp32", "cpu": suffix.endswith("-cpu"),
            "valid_only": bool(match["select"])}


def fp32_label(label):
    """The label of the same table in fp32 ("cpu-bf16-cpu" -> "cpu"), or None for an fp32 table or another name."""
    match = LABEL.match(label)
    if not match or not match["precision"]:
        return None
    return label[:match.start("precision")] + label[match.end("precision"):]


def label_flags(label):
    """The grid flags that make a table of this label ("tiny-e1-bf16-cpu" -> "--preset tiny --epochs 1
    --precision bf16 --device cpu")."""
    try:
        parts = parse_label(label)
    except ValueError:
        return f"--preset {label}"
    flags = [f"--preset {parts['preset']}"] + ([f"--epochs {parts['epochs']}"] if parts["epochs"] else [])
    flags += [f"--set {key}={value}" for key, value in parts["overrides"].items()]
    if parts["precision"] != "fp32":
        flags.append(f"--precision {parts['precision']}" + (" --device cpu" if parts["cpu"] else ""))
    return " ".join(flags)


def preset_of(label):
    """The preset a table's label starts with (the whole name for a table named otherwise)."""
    try:
        return parse_label(label)["preset"]
    except ValueError:
        return label
