from benchmarks.tables import task_table
from benchmarks.tables import machines
from benchmarks.tables.overview import overview


def _run(variant, seed, device, speed, threads=1):
    return {"variant": variant, "dropout": 0.2, "seed": seed, "provenance": {"device": device},
            "details": {"decode_sent_s": speed, "threads": threads, "decode": {"beam": 12}}}


def test_decoding_speeds_of_different_machines_are_never_averaged():
    runs = [_run("none", 1, "cuda", 900.0), _run("none", 2, "cuda", 1000.0),
            _run("naive", 1, "cpu", 40.0, threads=2), _run("naive", 2, "cuda", 1000.0)]
    line = task_table.decoding_speed(runs)[-1]
    assert "none p=0.2 950.0 sentences/s" in line
    assert "naive p=0.2 40.0 sentences/s (beam 12, 2 threads on cpu)" in line
    assert "naive p=0.2 1000.0 sentences/s" in line and "520.0" not in line
    assert "1 thread on cuda" in line


def test_overview_lists_results_tables_only(tmp_path):
    """mc.json (benchmarks.mc), speed.json and selection tables sit beside the results tables; the overview, which
    every benchmarks.run rewrites, must skip them (an mc.json once made it fail with KeyError: 'metrics')."""
    import json

    (tmp_path / "lm").mkdir()
    mc_entry = {"checkpoint": "runs/lm/cpu/zaremba-p0.2-seed1/best.pt", "task": "lm", "variant": "zaremba",
                "dropout": 0.2, "seed": 1, "standard": {}, "mc": {}}
    (tmp_path / "lm" / "mc.json").write_text(json.dumps([mc_entry]))
    (tmp_path / "lm" / "cpu-selection.json").write_text(json.dumps({"rule": "best validation", "runs": []}))
    text = overview(tmp_path)
    assert "mc.md" not in text and "selection" not in text and "| lm |" not in text
    assert "schemes.png" not in text  # an empty cross-task table draws no figure: none is linked
    (tmp_path / "schemes.png").write_bytes(b"\x89PNG")
    assert "([schemes.png](schemes.png), data: [schemes.json](schemes.json))" in overview(tmp_path)


def test_a_row_whose_seeds_ran_on_different_machines_says_so():
    cpu = {"device": "cpu", "cpu_model": "AMD EPYC", "torch": "2.9.1+cu128"}
    h200 = {"device": "cuda:0", "gpu": "NVIDIA H200", "torch": "2.11.0+cu130"}
    group = [{"variant": "none", "dropout": 0.0, "seed": s, "provenance": prov}
             for s, prov in ((1, cpu), (2, h200), (3, h200))]
    assert machines.seeds_text(group) == "1 (AMD EPYC, torch 2.9); 2,3 (NVIDIA H200, torch 2.11)"
    lines = machines.mixed_machines_lines({("none", 0.0): group})
    assert "more than one machine" in lines[0] and "none p=0: seeds 1 (AMD EPYC, torch 2.9)" in lines[0]
    same = [dict(run, provenance=cpu) for run in group]
    assert machines.seeds_text(same) == "1,2,3" and machines.mixed_machines_lines({("none", 0.0): same}) == []


def test_a_damaged_neighbour_table_is_left_out_of_the_overview_with_a_warning_naming_it(tmp_path):
    import json
    from pathlib import Path

    import pytest

    from benchmarks.tables.overview import write_overview

    runs = json.loads((Path(__file__).resolve().parent.parent / "results" / "lm" / "small.json").read_text())
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "small.json").write_text(json.dumps(runs))
    (tmp_path / "lm" / "old-notes.json").write_text("{ not json")  # a real damaged file beside it
    (tmp_path / "lm" / "cpu.json").write_text(json.dumps([{"variant": "none"}]))  # the default table, fields missing
    (tmp_path / "lm" / "tiny.json").mkdir()  # a folder named like a table
    with pytest.warns(UserWarning) as caught:
        write_overview(tmp_path)
    said = " ".join(str(w.message) for w in caught)
    assert "old-notes.json" in said and "cpu.json" in said and "left out of" in said
    assert said.count("move it away") == 3  # each fix said once (the folder's named its own already)
    assert "[small.md](lm/small.md)" in (tmp_path / "README.md").read_text()


def test_a_smoke_preset_run_into_the_repositorys_results_leaves_its_tracked_overview_alone(tmp_path, monkeypatch):
    """tiny's tables say "not a result": into the repository's results/ they get schemes-tiny.md of their own, and
    README.md and schemes.md stay as they were (neither lists them); into any other folder they are listed."""
    import json

    from benchmarks.tables import overview as overview_module
    from benchmarks.tables.task_table import write_results
    from tasks.base import get_task
    from tests.test_reliability import entry

    results = tmp_path / "results"
    write_results(results, get_task("lm"), "tiny", "tiny", [entry("none", 1, 9.0), entry("zaremba", 1, 8.0)])
    overview_module.write_overview(results, "tiny")  # not the repository's: listed
    assert "[tiny.md](lm/tiny.md)" in (results / "README.md").read_text()
    monkeypatch.setattr(overview_module, "ROOT", tmp_path)  # now results/ is the repository's own
    (results / "README.md").write_text("the tracked overview\n")
    (results / "schemes.md").write_text("the tracked schemes table\n")
    overview_module.write_overview(results, "tiny")
    assert (results / "README.md").read_text() == "the tracked overview\n"
    assert (results / "schemes.md").read_text() == "the tracked schemes table\n"
    assert "Smoke-test preset: not a result." in (results / "schemes-tiny.md").read_text()
    overview_module.write_overview(results)  # a real run later: its overview leaves tiny out
    text = (results / "README.md").read_text()
    assert "tiny" not in text and json.loads((results / "lm" / "tiny.json").read_text())


def test_a_task_table_names_machines_and_uncommitted_code_beside_its_numbers():
    """The summary's machine column names the CPU or GPU; rows with runs from uncommitted code say so under it; a
    paired seed whose two runs ran on different machines is marked in the tests of differences."""
    import json
    from pathlib import Path

    from tasks.base import get_task

    runs = json.loads((Path(__file__).resolve().parent.parent / "results" / "lm" / "cpu.json").read_text())
    runs = [r for r in runs if r["variant"] in ("none", "zaremba", "naive")]
    cpu = {"device": "cpu", "cpu_model": "AMD EPYC", "torch": "2.9.1+cu128", "git_commit": "a" * 40}
    h200 = {"device": "cuda:0", "gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "git_commit": "b" * 40 + "-dirty"}
    for run in runs:
        machine = h200 if run["variant"] == "naive" and run["seed"] in (1, 2) else cpu
        run["provenance"] = {**{k: v for k, v in run["provenance"].items() if k != "gpu"}, **machine}
    text = task_table.task_markdown(get_task("lm"), "cpu", "cpu", runs)
    summary = text[text.index("## Summary"):text.index("## Details")]
    assert "| 3 | AMD EPYC, NVIDIA H200 |" in summary and "| 3 | AMD EPYC |" in summary
    assert "**Rows with runs from uncommitted code**" in summary and "naive p=0.2: seeds 1,2." in summary
    tests = text[text.index("## Is the difference real?"):]
    assert "| naive p=0.2 − none p=0 | test ppl | 1†,2†,3 |" in tests
    assert "| zaremba p=0.2 − none p=0 | test ppl | 1,2,3 |" in tests and "† the seed's two runs ran on" in tests
    for run in runs:
        run["provenance"] = {**{k: v for k, v in run["provenance"].items() if k != "gpu"}, **cpu}
    text = task_table.task_markdown(get_task("lm"), "cpu", "cpu", runs)
    assert "†" not in text and "uncommitted code**" not in text


def test_report_re_renders_a_labels_own_schemes_table_where_one_exists(tmp_path):
    """`benchmarks.report results/<task>/<label>.json` rewrites schemes-<label>.md (made by a grid on that label)
    with the other tables, and makes none where there was none."""
    import shutil
    from pathlib import Path

    from benchmarks import report

    (tmp_path / "lm").mkdir()
    table = tmp_path / "lm" / "cpu-bf16-cpu.json"
    shutil.copy(Path(__file__).resolve().parent.parent / "results" / "lm" / "cpu-bf16-cpu.json", table)
    report.main([str(table)])
    assert not (tmp_path / "schemes-cpu-bf16-cpu.md").exists() and (tmp_path / "schemes.md").exists()
    (tmp_path / "schemes-cpu-bf16-cpu.md").write_text("stale\n")
    report.main([str(table)])
    assert "| lm (cpu-bf16-cpu): test ppl" in (tmp_path / "schemes-cpu-bf16-cpu.md").read_text()
