"""core.precision: what fp32 means on a GPU (IEEE or TF32 for matmuls and cuDNN's LSTM) and its record in every run's
provenance. torch's switches are process-wide flags, so these run without a GPU."""
import pytest

from core.precision import fp32_math, resolve_precision, set_fp32_math
from core.provenance import fp32_math_text, provenance


@pytest.mark.parametrize("precision, math", [("fp32", "ieee"), ("tf32", "tf32")])
def test_a_cuda_run_sets_matmuls_and_the_cudnn_lstm_alike(precision, math, fp32_switches):
    """torch 2.9+: cuDNN's RNN has a switch of its own ("tf32" at start) that the cuDNN-wide one does not override;
    fp32_math reads the LSTM's."""
    set_fp32_math(tf32=math != "tf32")  # start from the other setting
    assert resolve_precision(precision, "cuda") == precision
    assert fp32_math("cuda") == {"matmul": math, "cudnn": math}


def test_every_run_records_the_precision_of_its_fp32_math(fp32_switches):
    assert provenance("cpu")["fp32_math"] == {"matmul": "ieee"}
    set_fp32_math(tf32=True)
    recorded = {"fp32_math": fp32_math("cuda")}
    assert fp32_math_text(recorded) == ", fp32 matmul tf32, cuDNN tf32"
    assert fp32_math_text({}) == "" and fp32_math_text(provenance("cpu")) == ""  # older entries; CPUs have no cuDNN


def test_bf16_runs_on_a_cpu_get_a_table_of_their_own():
    from benchmarks.tables.labels import table_label
    from tasks.base import get_task

    lm = get_task("lm")
    assert table_label(lm, "cpu", precision="bf16", device="cpu") == "cpu-bf16-cpu"
    assert table_label(lm, "cpu", precision="bf16", device="cuda:0") == "cpu-bf16"  # the H200 runs' table
    assert table_label(lm, "cpu", precision="fp32", device="cpu") == "cpu"  # fp32 is IEEE on every device


def test_a_table_of_a_paper_preset_in_another_precision_keeps_the_papers_column():
    """medium-bf16-cpu is the paper's medium preset in bf16: its table shows Table 1's 86.2 / 82.7 beside our runs."""
    import json
    from pathlib import Path

    from benchmarks.tables import task_table
    from benchmarks.tables.labels import paper_label
    from tasks.base import get_task

    assert [paper_label(x) for x in ("medium-bf16-cpu", "large-bf16", "small-tf32", "cpu-e3", "medium")] == [
        "medium", "large", "small", "cpu-e3", "medium"]
    run = json.loads((Path(__file__).resolve().parent.parent / "results" / "lm" / "small.json").read_text())[0]
    text = task_table.task_markdown(get_task("lm"), "small-bf16-cpu", "small", [run])
    row = next(line for line in text.splitlines() if line.startswith("| none | 0 |") and "/13" in line)
    assert row.endswith("| 120.7 | 114.5 |")
