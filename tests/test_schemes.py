"""The successors' dropout schemes (variational, weightdrop, zoneout): each checked against its equations."""
import pytest
import torch

from core import SCHEMES, DropoutLSTM, init_uniform, lstm_cell
from core.schemes import embedding_dropout

B, T, IN, H = 4, 9, 5, 6


def module(scheme, p=0.5, layers=2, stepwise=None):
    torch.manual_seed(0)
    lstm = DropoutLSTM(IN, H, layers, p, scheme, stepwise=stepwise)
    init_uniform(lstm, 0.4)
    return lstm.double()


def data(seed=1):
    torch.manual_seed(seed)
    return torch.randn(B, T, IN, dtype=torch.double)


def replay(lstm, x, step, seed):
    """Run `lstm` in train mode under `seed`, then re-run the same draws by hand: `step(t, layer, x_t, h, c, masks,
    w_hh)` -> (h, c) for a 1-layer module. Returns the module's (output, h_n) and the by-hand (output, h_n)."""
    torch.manual_seed(seed)
    out, (h_n, _) = lstm.train()(x)
    torch.manual_seed(seed)
    scheme = lstm.scheme
    masks = scheme.begin(x, 1, H, True)
    x = scheme.drop_input(x, True, masks)
    w_ih, w_hh, b_ih, b_hh = lstm._layer_parameters(0)
    w_hh = scheme.recurrent_weight(w_hh, True)
    h = c = x.new_zeros(B, H)
    outs = []
    for t in range(T):
        h, c = step(x[:, t], h, c, masks, torch.cat([w_ih, w_hh], 1), b_ih + b_hh)
        outs.append(h)
    return (out, h_n[0]), (scheme.drop_output(torch.stack(outs, 1), True, masks), h)


@pytest.mark.parametrize("scheme, stepwise", [(s, stepwise) for s in SCHEMES if s != "zoneout"
                                              for stepwise in (False, True) if stepwise or SCHEMES[s].fused])
def test_every_scheme_but_zoneout_is_none_in_eval_mode(scheme, stepwise):
    reference, tested = module("none", stepwise=True), module(scheme, stepwise=stepwise)
    tested.load_state_dict(reference.state_dict())
    x = data()
    torch.testing.assert_close(tested.eval()(x)[0], reference.eval()(x)[0], atol=1e-10, rtol=0)
    if scheme != "none":  # and it does something in training
        assert not torch.equal(tested.train()(x)[0], reference.eval()(x)[0])


def test_which_schemes_keep_the_fused_path():
    assert not module("weightdrop").stepwise  # DropConnect on W_hh still runs as one nn.LSTM call
    assert module("variational").stepwise and module("zoneout").stepwise


def test_variational_uses_one_mask_per_sequence_for_every_time_step():
    """The gradient of the output with respect to x[b, t, d] is zero exactly where the input mask of sequence b
    drops feature d: the same features at every step, different features for different sequences."""
    lstm = module("variational", layers=1).train()
    x = data().requires_grad_()
    lstm(x)[0].sum().backward()
    dropped = x.grad == 0  # (B, T, IN)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    assert dropped.any() and not dropped.all()
    assert len({tuple(row.tolist()) for row in dropped[:, 0]}) > 1
    x2 = x.detach().clone().requires_grad_()
    lstm(x2)[0].sum().backward()
    assert not torch.equal(x2.grad == 0, dropped)  # a new forward pass draws new masks


def test_variational_follows_its_equations_including_the_recurrent_mask():
    def step(x_t, h, c, masks, weight, bias):
        return lstm_cell(x_t, h * masks["recurrent"][0], c, weight, bias)

    (out, _), (by_hand, _) = replay(module("variational", layers=1), data(), step, seed=5)
    torch.testing.assert_close(out, by_hand, atol=1e-10, rtol=0)
    mask = module("variational", layers=1).scheme.begin(data(), 1, H, True)["recurrent"][0]
    assert set(mask.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept units scaled by 1 / (1 - p)


@pytest.mark.parametrize("stepwise", [False, True])
def test_weightdrop_masks_w_hh_per_forward_pass_and_never_leaves_it_masked(stepwise):
    lstm = module("weightdrop", layers=1, stepwise=stepwise).train()
    before = lstm.lstm.weight_hh_l0.detach().clone()
    x = data()
    lstm(x)[0].pow(2).sum().backward()
    assert torch.equal(lstm.lstm.weight_hh_l0, before)  # the parameter itself is never masked
    zero = lstm.lstm.weight_hh_l0.grad == 0
    assert 0.3 < zero.float().mean() < 0.7  # about p of W_hh's entries got no gradient: they were dropped
    assert not (lstm.lstm.weight_ih_l0.grad == 0).any()
    torch.testing.assert_close(lstm.eval()(x)[0], module("zaremba", layers=1).eval()(x)[0])


def test_weightdrop_fused_equals_its_equations():
    def step(x_t, h, c, masks, weight, bias):
        return lstm_cell(x_t, h, c, weight, bias)

    # nn.LSTM's output is laid out differently in memory, so the output mask (drawn in memory order) differs
    # from the by-hand one; the final state sees every step's masked W_hh and no output mask.
    (_, h_n), (_, h) = replay(module("weightdrop", layers=1, stepwise=False), data(), step, seed=7)
    torch.testing.assert_close(h_n, h, atol=1e-10, rtol=0)


def test_zoneout_training_keeps_each_unit_with_probability_p():
    p = 0.3
    lstm = module("zoneout", p, layers=1).train()
    x = data()
    torch.manual_seed(3)
    out, _ = lstm(x)
    torch.manual_seed(3)
    keep_h, keep_c = lstm.scheme.zoneout_masks(x.new_zeros(B, H), T, True)
    assert set(keep_h.unique().tolist()) == {0.0, 1.0} and 0.2 < keep_c.mean() < 0.4  # Bernoulli(p), per unit
    assert not torch.equal(keep_h, keep_c)
    w_ih, w_hh, b_ih, b_hh = lstm._layer_parameters(0)
    h = c = x.new_zeros(B, H)
    outs = []
    for t in range(T):
        h_new, c_new = lstm_cell(x[:, t], h, c, torch.cat([w_ih, w_hh], 1), b_ih + b_hh)
        h = torch.where(keep_h[t] > 0, h, h_new)
        c = torch.where(keep_c[t] > 0, c, c_new)
        outs.append(h)
    torch.testing.assert_close(out, torch.stack(outs, 1), atol=1e-10, rtol=0)
    held = (out[:, 1:] == out[:, :-1]).float().mean()
    assert 0.15 < held < 0.45  # about p of the hidden units kept their previous value


def test_zoneout_evaluation_is_the_expectation():
    p = 0.3
    lstm = module("zoneout", p, layers=1).eval()
    x = data()
    w_ih, w_hh, b_ih, b_hh = lstm._layer_parameters(0)
    h = c = x.new_zeros(B, H)
    outs = []
    for t in range(T):
        h_new, c_new = lstm_cell(x[:, t], h, c, torch.cat([w_ih, w_hh], 1), b_ih + b_hh)
        h, c = p * h + (1 - p) * h_new, p * c + (1 - p) * c_new
        outs.append(h)
    torch.testing.assert_close(lstm(x)[0], torch.stack(outs, 1), atol=1e-10, rtol=0)


def test_zoneout_with_its_own_cell_rate_draws_and_evaluates_each_rate():
    lstm = DropoutLSTM(IN, H, 1, 0.1, "zoneout", zoneout_cell=0.5).double()
    torch.manual_seed(0)
    keep_h, keep_c = lstm.scheme.zoneout_masks(torch.zeros(200, H, dtype=torch.double), T, True)
    assert 0.07 < keep_h.mean() < 0.13 and 0.45 < keep_c.mean() < 0.55
    assert [m.item() for m in lstm.scheme.zoneout_masks(torch.zeros(2, H), T, False)] == pytest.approx([0.1, 0.5])
    with pytest.raises(ValueError, match="zoneout_cell must be in"):
        DropoutLSTM(IN, H, 1, 0.1, "zoneout", zoneout_cell=1.0)


def test_tables_refuse_zoneout_runs_of_one_p_with_different_cell_rates():
    from benchmarks.tables.merge import check_consistent

    runs = [{"variant": "zoneout", "dropout": 0.1, "seed": s, "config": {"zoneout_cell": c}}
            for s, c in ((1, 0.5), (2, 0.3))]
    check_consistent(runs[:1] + [{**runs[1], "config": {"zoneout_cell": 0.5}}])
    with pytest.raises(ValueError, match="zoneout with 0.1, cells 0.5 and with 0.1, cells 0.3"):
        check_consistent(runs)


def test_zoneout_has_no_other_dropout():
    lstm = module("zoneout", 0.5, layers=2).train()
    x = data().requires_grad_()
    lstm(x)[0].sum().backward()
    assert not (x.grad == 0).any()  # no input mask


def test_embedding_dropout_drops_word_types():
    torch.manual_seed(0)
    weight = torch.randn(50, 8)
    ids = torch.randint(0, 50, (6, 40))
    out = embedding_dropout(weight, ids, 0.5, training=True)
    zero = (out == 0).all(-1)
    for word in ids.unique():  # every occurrence of a word shares its fate
        assert zero[ids == word].all() or not zero[ids == word].any()
    assert zero.any() and not zero.all()
    torch.testing.assert_close(out[~zero], weight[ids][~zero] * 2)
    assert torch.equal(embedding_dropout(weight, ids, 0.5, training=False), weight[ids])


def _fake_runs(variants, base, spread, metric="test_acc", valid_spread=None):
    """Runs whose test accuracy also has per-utterance statistics (100 utterances of 100 frames that add up to
    it), so the paired bootstrap can back a verdict (docs/results.md: seeds alone never do)."""
    valid = metric.replace("test_", "valid_")
    runs = [{"variant": v, "dropout": 0.0 if v == "none" else 0.3, "seed": s, "config": {}, "history": [],
             "provenance": {"git_commit": "c", "device": "cpu"}, "wall_s": 1.0,
             "metrics": {metric: base + i * spread + 0.1 * s,
                         valid: base + i * (spread if valid_spread is None else valid_spread) + 0.1 * s}}
            for i, v in enumerate(variants) for s in (1, 2, 3)]
    if metric == "test_acc":
        for run in runs:
            run["details"] = {"items": {"acc": [[run["metrics"][metric] + (k % 3 - 1) * 0.5, 100] for k in range(100)]}}
    return runs


def test_cross_task_schemes_table_and_figure(tmp_path):
    import json

    from benchmarks.tables.cross_task import write_schemes
    from tasks.base import get_task, load_tasks

    tasks = load_tasks()
    speech = get_task("speech")
    (tmp_path / "speech").mkdir()
    (tmp_path / "speech" / "cpu.json").write_text(json.dumps(_fake_runs(["none", "zaremba", "zoneout"], 80.0, 2.0)))
    (tmp_path / "caption").mkdir()  # zoneout not run on caption yet
    (tmp_path / "caption" / "cpu.json").write_text(json.dumps(_fake_runs(["none", "zaremba"], 20.0, -2.0, "test_ppl")))
    caption = get_task("caption")
    write_schemes({"speech": speech, "lm": tasks["lm"], "caption": caption}, tmp_path)
    text = (tmp_path / "schemes.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) == {"scheme", "none", "zaremba", "zoneout"}  # schemes without runs get no row
    assert rows["zoneout"].split(" | ")[1:] == ["not run yet", "84.20 ± 0.10 (p=0.3, 3 seeds); Δ none +4.00 "
                                               "[+4.00, +4.00] * |"]  # columns by task name: caption, speech
    assert "lm" not in rows["scheme"]  # a task without a table gets no column
    caption_cell = rows["zaremba"].split(" | ")[1]  # Δ none -2.00 on every seed, but no per-item statistics
    assert "Δ none -2.00 [-2.00, -2.00]" in caption_cell and "*" not in caption_cell
    assert "- speech: **zoneout** ranks first on validation acc (84.20, runner-up zaremba 82.20), and the lead holds " \
           "significantly on test: test 84.20 vs 82.20, over 3 paired seeds.\n" in text
    assert "over 3 paired seeds. Not run yet on caption, so not in the ranking: zoneout.\n" in text
    assert (tmp_path / "schemes.png").stat().st_size > 1000
    # validation ranks, test only tests: a scheme best on test but not on validation is not named the winner
    (tmp_path / "speech" / "cpu.json").write_text(json.dumps(_fake_runs(["none", "zaremba", "zoneout"], 80.0, 2.0,
                                                                        valid_spread=-2.0)))
    write_schemes({"speech": speech}, tmp_path)
    text = (tmp_path / "schemes.md").read_text()
    assert "- speech: **none** ranks first on validation acc (80.20, runner-up zaremba 78.20), but on test it is " \
           "**behind** it: test 80.20 vs 82.20" in text


def test_the_schemes_table_marks_significance_after_holm_over_each_tasks_comparisons_with_none(monkeypatch):
    """The one rule of every table (docs/results.md): Holm-adjusted bootstrap p < 0.05 and the seed interval away
    from 0. The family is a task's comparisons against none: 0.03 with two others (Holm 0.06) gets no mark, 0.03
    alone in its column keeps it. Unadjusted, every 0.03 would be marked."""
    from benchmarks.tables import cross_task
    from tasks.base import get_task

    bootstrap_p = {"zaremba": 0.001, "naive": 0.03, "variational": 0.03}

    def paired_comparison(a_runs, b_runs, metric, lower):
        p = bootstrap_p[a_runs[0]["variant"]] if b_runs[0]["variant"] == "none" else 0.5
        return {"metric": metric, "diff": -1.0, "seed_ci": (-2.0, -0.5), "boot_ci": (-1.5, -0.5), "p": p,
                "seeds_agree": True, "significant": p < 0.05, "seeds": [1, 2, 3], "a_better": 3, "b_better": 0}

    monkeypatch.setattr(cross_task, "paired_comparison", paired_comparison)
    three = _fake_runs(["none", "zaremba", "naive", "variational"], 20.0, -1.0, "test_ppl")
    one = _fake_runs(["none", "naive"], 100.0, -1.0, "test_ppl")
    text = cross_task.schemes_markdown([("caption", get_task("caption"), three), ("lm", get_task("lm"), one)])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines()
            if line.startswith("| ")}
    assert rows["zaremba"][0].endswith(" *")  # Holm 3 x 0.001
    assert "*" not in rows["naive"][0] and "*" not in rows["variational"][0]  # Holm 2 x 0.03 = 0.06
    assert rows["naive"][1].endswith(" * |")  # a family of one: 0.03
    assert "Holm's adjustment over the family of that task's comparisons against `none`" in text
    assert "unadjusted" not in text


def test_masks_under_cpu_autocast_come_from_uniform_draws_with_the_same_distribution():
    """bf16 training on a CPU draws masks with uniform_ (bernoulli_ is serial there); fp32 keeps F.dropout's
    stream bit for bit, so the committed fp32 tables stay reproducible."""
    from core.schemes import dropout

    x = torch.ones(200, 500)
    torch.manual_seed(3)
    plain = dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    assert torch.equal(plain, torch.nn.functional.dropout(x, 0.3, training=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked = dropout(x, 0.3, training=True)
        assert torch.equal(dropout(x, 0.3, training=False), x)
    values = masked.unique()
    assert len(values) == 2 and values[0] == 0 and torch.isclose(values[1], torch.tensor(1 / 0.7))
    assert abs((masked == 0).float().mean().item() - 0.3) < 0.01  # 100k draws: 0.3 +- 0.0015 (std)
    assert abs(masked.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation


def test_bf16_training_on_a_cpu_takes_the_per_step_path_from_512_units():
    """Where the per-step path with bf16 products beats oneDNN's fused bf16 LSTM (docs/performance.md); the two
    paths compute the same function (p=0 here, so no masks differ)."""
    from core.lstm import STEPWISE_BF16_FROM

    torch.manual_seed(0)
    for hidden, expected in ((STEPWISE_BF16_FROM - 1, False), (STEPWISE_BF16_FROM, True)):
        lstm = DropoutLSTM(8, hidden, 2, 0.0, "zaremba")
        x = torch.randn(2, 3, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert lstm._stepwise_is_faster(x) is expected
            lstm.eval()
            assert not lstm._stepwise_is_faster(x)  # evaluation stays fused
            lstm.train()
            out, _ = lstm(x)
            fused, _ = lstm._forward_fused(x, (x.new_zeros(2, 2, hidden),) * 2, None, None)
        assert not lstm._stepwise_is_faster(x)  # fp32: never
        assert (out.float() - fused.float()).abs().max() < 0.02


def test_the_cross_task_table_is_also_data_and_a_smoke_preset_says_it_is_no_result(tmp_path):
    import json
    from pathlib import Path

    from benchmarks.tables.cross_task import write_schemes
    from tasks.base import load_tasks

    tasks = load_tasks()
    runs = json.loads((Path(__file__).resolve().parent.parent / "results" / "lm" / "cpu.json").read_text())
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "cpu.json").write_text(json.dumps(runs))
    write_schemes({"lm": tasks["lm"]}, tmp_path)
    records = json.loads((tmp_path / "schemes.json").read_text())
    zaremba = next(r for r in records if r["row"] == "zaremba")
    table = (tmp_path / "schemes.md").read_text()
    assert f"{zaremba['mean']:.2f} ± {zaremba['std']:.2f}" in table and len(zaremba["values"]) == 3
    assert zaremba["vs_none"]["verdict"] == "significant" and "p_holm" in zaremba["vs_none"]
    assert "none" in {r["row"] for r in records} and next(r for r in records if r["row"] == "none")["vs_none"] is None
    assert "Smoke-test preset" not in table
    tiny = [dict(run, config={**run["config"], "hidden": 16}) for run in runs if run["seed"] == 1]
    (tmp_path / "lm" / "tiny.json").write_text(json.dumps(tiny))
    write_schemes({"lm": tasks["lm"]}, tmp_path, "tiny")
    assert "**Smoke-test preset: not a result.**" in (tmp_path / "schemes-tiny.md").read_text()


def test_the_cross_task_table_says_how_each_p_was_set_and_which_choice_sits_at_the_edge_of_its_grid():
    """A scheme tuned on validation beside one at the preset's p is 'not tuned alike'; a p from the preset's
    scheme_dropout counts as tuned (it was chosen on validation); a choice at the low edge of its grid gets a grid
    below it."""
    from benchmarks.tables import cross_task
    from tasks.base import get_task

    task = get_task("lm")
    runs = _fake_runs(["none", "zaremba", "variational", "mine"], 100.0, -1.0, "test_ppl")
    for run in runs:
        run["preset"] = "cpu"  # variational has a scheme_dropout entry there, zaremba takes the preset's dropout
        run["p_from"] = {"none": "none", "mine": "chosen on validation (results/lm/cpu-selection.md)"}.get(
            run["variant"])
    selections = {"lm": {"mine": {"dropout": 0.3, "zoneout_cell": None, "at_edge": True, "points": [0.3, 0.5]}}}
    text = cross_task.schemes_markdown([("lm", task, runs)], None, selections)
    line = next(x for x in text.splitlines() if x.startswith("- lm: by"))
    assert line.startswith("- lm: by the preset: zaremba p=0.3; on validation: variational p=0.3, mine p=0.3 "
                           "(**not tuned alike**).")
    assert "mine p=0.3 is at the low edge of its grid" in line and "--grid mine=0.15,0.075`" in line
    assert "to be trained again" not in line
    selections["lm"]["mine"]["dropout"] = 0.15  # a re-run grid point changed the choice after the rows ran
    line = next(x for x in cross_task.schemes_markdown([("lm", task, runs)], None, selections).splitlines()
                if x.startswith("- lm: by"))
    assert "**mine's runs are at p=0.3, but its selection table now chooses 0.15**: they are to be trained again" in line
    tuned = [r for r in runs if r["variant"] != "zaremba"]
    assert "(tuned alike)" in cross_task.schemes_markdown([("lm", task, tuned)], None, {})
    assert "each scheme's p was chosen on validation only" not in text.lower()  # zaremba's was not


def test_a_tie_on_validation_names_every_scheme_that_ties():
    """A smoke preset where three schemes score alike: all three are named, none ranks first."""
    from benchmarks.tables import cross_task
    from tasks.base import get_task

    runs = _fake_runs(["none", "zaremba", "mine"], 40.3, 0.0, "test_acc", valid_spread=0.0)
    text = cross_task.schemes_markdown([("speech", get_task("speech"), runs)])
    assert "- speech: no scheme ranks first on validation acc: none, zaremba and mine tie at" in text
    assert "ranks first on" not in text.replace("no scheme ranks first on", "")


def test_the_grid_command_that_extends_an_edge_names_the_task_and_the_flags_of_the_tables_label():
    """The grid's closing lines name a table 'lm/tiny-e1-bf16-cpu': the command must say --tasks lm and give back
    the flags that label stands for, so that it runs as printed."""
    import shlex

    from benchmarks import grid
    from benchmarks.tables import cross_task
    from benchmarks.tables.labels import table_label
    from tasks.base import get_task

    task = get_task("lm")
    runs = _fake_runs(["none", "mine"], 100.0, -1.0, "test_ppl")
    for run in runs:
        run["p_from"] = {"none": "none", "mine": "chosen on validation"}[run["variant"]]
    label = "tiny-e1-bf16-cpu"
    decision = {"mine": {"dropout": 0.3, "zoneout_cell": None, "at_edge": True, "points": [0.3, 0.5]}}
    [line] = cross_task.tuning_lines([(f"lm/{label}", task, runs)], {f"lm/{label}": decision}, label)[2:-1]
    command = shlex.split(line.split("`")[1])
    assert command[:3] == ["python", "-m", "benchmarks.grid"]
    args = grid.build_parser().parse_args(command[3:])
    assert args.tasks == "lm" and table_label(task, args.preset, args.epochs, precision=args.precision,
                                              device=args.device) == label
