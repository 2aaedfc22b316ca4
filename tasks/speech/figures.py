"""The speech task's figure: an example utterance's frame labels and each variant's predictions."""
import base64

from tasks.base import IGNORE


def plot_frames(reference, predictions, path, title):
    """Draw the example utterance recorded in `reference["frames"]` with the reference labels and the
    predictions of each {(variant, p): details} under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from core.utils import atomic_write

    example, classes = reference["frames"], reference["classes"]
    image = np.frombuffer(base64.b64decode(example["features_u8"]), dtype=np.uint8).reshape(example["shape"])
    seconds = len(image) * example["hop_ms"] / 1000
    rows = [("reference", example["reference"], None)]
    for (variant, p), details in predictions.items():
        pred, ref = np.array(details["frames"]["prediction"]), np.array(example["reference"])
        real = ref != IGNORE
        rows.append((f"{variant} (p={p:g})", pred.tolist(), 100.0 * (pred[real] == ref[real]).mean()))
    fig, axes = plt.subplots(1 + len(rows), 1, figsize=(12, 2.6 + 0.7 * len(rows)), sharex=True,
                             gridspec_kw={"height_ratios": [4] + [1] * len(rows)})
    axes[0].imshow(image.T, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, image.shape[1]))
    axes[0].set_ylabel("feature (log-mel,\nthen deltas)" if image.shape[1] > 80 else "log-mel band")
    axes[0].set_title(f"{title}: test utterance {example['index']} (speaker {example['speaker']}, "
                      f"{' '.join(f.split('_')[0] for f in example['files'])})")
    cmap = plt.get_cmap("tab20", max(len(classes), 2))
    for ax, (name, labels, acc) in zip(axes[1:], rows):
        ids = np.array(labels, dtype=float)
        ids[ids < 0] = np.nan  # IGNORE and UNSEEN
        ax.imshow(ids[None], aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest",
                  extent=(0, seconds, 0, 1))
        for start, end, cls_id in _segments(labels):
            if cls_id >= 0 and end - start >= 4:
                ax.text((start + end) / 2 * seconds / len(labels), 0.5, classes[cls_id], ha="center", va="center",
                        fontsize=8)
        ax.set_yticks([])
        ax.set_ylabel(name if acc is None else f"{name}\n{acc:.1f}%", rotation=0, ha="right", va="center",
                      fontsize=9)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def _segments(labels):
    """Runs of equal labels: [(start, end, label)]."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((start, i, labels[start]))
            start = i
    return runs
