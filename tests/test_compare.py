"""Tests for compare.py (method §9): the statistics helpers on cases with known answers, and the
study driver on a tiny grid: cache and resume, a changed configuration refused, and the
baselines' reuse of the dense LoRA model equal to train.run's own baseline.

The grid runs are real train.run calls on the tiny checkpoint of conftest.py (2 layers,
hidden 64, word-level tokenizer), 8 training examples, 2 epochs of batch 4, calibration
2 x 16 tokens, 8 test items, 6 perplexity windows of 16 tokens; CPU.
Run: python -m pytest -q tests/test_compare.py
"""
import json
import math
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from drivers import compare  # noqa: E402
from conftest import words  # noqa: E402
import eval as E  # noqa: E402
import efx  # noqa: E402
import model as M  # noqa: E402
import train  # noqa: E402

N_BOOT = 2000


# ----------------------------------------------------------------------------- statistics

def test_s9_bootstrap_bernoulli_matches_normal_interval():
    """One seed, n Bernoulli(p) items: the percentile interval of the mean is close to the
    normal one, p_hat +- 1.96 sqrt(p_hat (1 - p_hat) / n). Tolerance 0.006: the Monte Carlo sd
    of a 2.5 % quantile from 2000 resamples is sqrt(0.025 * 0.975 / 2000) / phi(1.96) * se
    = 0.06 se = 0.0014 (se = 0.023 here), a resampled mean moves in steps of 1/n = 0.0025,
    and the binomial's skew at p = 0.3, n = 400 shifts the ends by well under 0.001."""
    n, p = 400, 0.3
    x = (np.random.default_rng(1).random(n) < p).astype(float)
    p_hat = x.mean()
    est, lo, hi = compare.bootstrap([x], compare.mean, n_boot=N_BOOT)
    half = 1.96 * math.sqrt(p_hat * (1 - p_hat) / n)
    assert est == p_hat
    assert lo == pytest.approx(p_hat - half, abs=0.006) and hi == pytest.approx(p_hat + half, abs=0.006)


def test_s9_bootstrap_constant_has_zero_width():
    assert compare.bootstrap([np.full(10, 0.7), np.full(5, 0.7)], compare.mean, n_boot=200) == (0.7, 0.7, 0.7)


def test_s9_bootstrap_seed_variance_widens_the_interval():
    """Hierarchical: three seeds whose accuracies differ (0.2, 0.5, 0.8) give a much wider
    interval than the same 600 items as one seed (item noise only)."""
    rng = np.random.default_rng(0)
    seeds = [(rng.random(200) < p).astype(float) for p in (0.2, 0.5, 0.8)]
    _, lo_h, hi_h = compare.bootstrap(seeds, compare.mean, n_boot=N_BOOT)
    _, lo_1, hi_1 = compare.bootstrap([np.concatenate(seeds)], compare.mean, n_boot=N_BOOT)
    assert hi_h - lo_h > 4 * (hi_1 - lo_1)


def test_s9_paired_identical_arms_and_constant_shift():
    """Identical arms: difference exactly 0 on every resample. An arm shifted by c = 0.25:
    exactly c with zero width (64 items and 2 seeds: every mean is exact in binary)."""
    rng = np.random.default_rng(0)
    a = [(rng.random(64) < 0.4).astype(float) for _ in range(2)]
    same = compare.paired(a, a, compare.mean, n_boot=500)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "flip": 0.0}
    shifted = compare.paired([x + 0.25 for x in a], a, compare.mean, n_boot=500)
    assert shifted == {"diff": 0.25, "lo": 0.25, "hi": 0.25, "flip": 0.0}
    with pytest.raises(ValueError, match="items per seed differ"):
        compare.paired(a, [a[0][:10], a[1]], compare.mean)


def test_s9_paired_is_tighter_than_unpaired_and_counts_flips():
    """Arms that share item difficulty (b = a with 5 % of items flipped to right): the paired
    interval of the difference is narrower than the two marginal intervals; flip is the share
    of resamples with a difference <= 0 against a positive estimate."""
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.5).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:10]] = 1.0
    d = compare.paired([b], [a], compare.mean, n_boot=N_BOOT)
    _, lo, hi = compare.bootstrap([a], compare.mean, n_boot=N_BOOT)
    assert d["diff"] == pytest.approx(0.05) and 0 < d["lo"] < 0.05 < d["hi"] and d["hi"] - d["lo"] < (hi - lo) / 2
    assert d["flip"] == 0.0                      # b >= a item by item: never a negative difference


def test_s9_statistics_match_eval():
    """The per-item statistics give evaluate's numbers: macro-F1 through eval.macro_f1 (None:
    unparsable, no class of its own), perplexity exp(sum NLL / (windows (seqlen - 1)))."""
    pairs = np.array([(0, 0), (None, 1), (2, 1), (1, 1)], dtype=object)
    assert compare.macro_f1(pairs) == E.macro_f1([0, None, 2, 1], [0, 1, 1, 1])
    nll = [15 * math.log(37)] * 6                # six uniform windows over 37 tokens, seqlen 16
    assert compare.perplexity(16)(np.array(nll)) == pytest.approx(37, rel=1e-12)


# ----------------------------------------------------------------------------- the grid


@pytest.fixture
def study(tmp_path, tiny_ckpt):
    """Factory: study(out, **CompareConfig fields) -> compare.CompareConfig on tiny files."""
    ckpt, _ = tiny_ckpt
    rng = random.Random(0)
    tr, te, ppl, calib, budget = (tmp_path / n for n in
                                  ("train.jsonl", "qa.jsonl", "ppl.txt", "calib.txt", "budget.json"))
    tr.write_text("".join(json.dumps({"prompt": words(rng, 6), "completion": " " + words(rng, 4)}) + "\n"
                          for _ in range(8)))
    te.write_text("".join(json.dumps({"prompt": words(rng, 6), "completion": " w1", "choices": [" w1", " w2"],
                                      "label": 0} if i % 2 else {"prompt": words(rng, 6), "completion": " w2",
                                                                  "choices": [" w1", " w2"], "label": 1}) + "\n"
                          for i in range(8)))
    ppl.write_text(words(rng, 200))
    calib.write_text(words(rng, 400))
    budget.write_text(json.dumps(dict(model=str(ckpt), calib=str(calib), epochs=2, batch_size=4, max_train=0,
                                      nsamples=2, seqlen=16, max_len=32, device="cpu", log_every=100,
                                      prune_every_steps=0)))

    def make(out, **kw):
        fields = dict(train=str(tr), tasks=[str(te)], ppl_file=str(ppl), sparsity=[0.5],
                      methods=["wanda_lora", "efx_none"], seeds=[0, 1], train_config=str(budget),
                      out=str(tmp_path / out), seqlen=16, ppl_max_windows=6, n_boot=50)
        return compare.CompareConfig(**{**fields, **kw})
    return make


def _count(monkeypatch, fail_at=None):
    """Count train.run and prune_dense calls; with fail_at = k, the k-th run raises."""
    calls = []
    real_run, real_prune = train.run, compare.prune_dense

    def hook(real, kind):
        def f(cfg, *a, **kw):
            calls.append((kind, cfg.method, cfg.seed))
            if len(calls) == fail_at:
                raise KeyboardInterrupt("injected")
            return real(cfg, *a, **kw)
        return f
    monkeypatch.setattr(train, "run", hook(real_run, "train"))
    monkeypatch.setattr(compare, "prune_dense", hook(real_prune, "prune"))
    return calls


def _stable(res):
    """results without wall times and time ratios (which differ between runs)."""
    return json.loads(json.dumps({k: v for k, v in res.items() if k != "table"}, default=str),
                      object_hook=lambda d: {k: v for k, v in d.items() if k not in ("wall_s", "time_x_dense")})


def test_s9_study_cache_and_resume(study, monkeypatch):
    """A second study reuses every cached run (no training, no pruning) and gives the same
    results; a study interrupted after its first run resumes to the results of an
    uninterrupted one; the baselines prune the dense model (no training of their own)."""
    logs = []
    calls = _count(monkeypatch)
    first = compare.study(study("a"), log=logs.append)
    assert calls == [("train", "dense", 0), ("prune", "wanda", 0), ("train", "efx", 0),
                     ("train", "dense", 1), ("prune", "wanda", 1), ("train", "efx", 1)]
    out = Path(study("a").out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "dense_lora-s0.json", "dense_lora-s1.json", "efx_none-50-s0.json", "efx_none-50-s1.json",
        "wanda_lora-50-s0.json", "wanda_lora-50-s1.json"]
    assert (out / "models/dense-s0/model/model.safetensors").exists() and not list(out.glob("work/*"))
    run = json.loads((out / "runs/wanda_lora-50-s0.json").read_text())
    assert len(run["window_nll"]) == 6 and len(run["items"]) == 8 and run["zeros"] == pytest.approx(0.5, abs=0.01)
    assert run["metrics"]["ppl"] == pytest.approx(compare.perplexity(16)(np.array(run["window_nll"])), rel=1e-12)
    assert sum("finished" in x for x in logs) == 6

    calls.clear(), logs.clear()
    again = compare.study(study("a"), log=logs.append)
    assert calls == [] and sum("cached" in x for x in logs) == 6
    assert _stable(again) == _stable(first)

    calls = _count(monkeypatch, fail_at=2)     # interrupted in its second run
    with pytest.raises(KeyboardInterrupt):
        compare.study(study("b"), log=logs.append)
    assert [p.name for p in (Path(study("b").out) / "runs").iterdir()] == ["dense_lora-s0.json"]
    calls = _count(monkeypatch)
    resumed = compare.study(study("b"), log=logs.append)
    assert len(calls) == 5 and ("train", "dense", 0) not in calls
    assert _stable(resumed)["rows"] == _stable(first)["rows"]

    table = (out / "results.md").read_text()
    assert table.startswith("| method | sparsity | ppl | qa/accuracy") and "Δ ppl vs best baseline" in table
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert res["best_baseline"] == {"0.5": "wanda_lora"} and rows["dense_lora @0%"]["rel"] == pytest.approx(100)
    efx = rows["efx_none @50%"]
    assert set(efx["vs_best"]) == {"ppl", "qa/accuracy"} and "vs_best" not in rows["wanda_lora @50%"]
    m = efx["metrics"]["ppl"]
    assert m["lo"] <= m["mean"] <= m["hi"] and m["mean"] == pytest.approx(np.mean(efx["per_seed"]["ppl"]))


def test_s9_study_refuses_a_changed_configuration_unless_overwrite(study, monkeypatch):
    c = study("a", methods=["wanda_lora"], seeds=[0])
    compare.study(c, log=lambda *_: None)
    budget = Path(c.train_config)
    budget.write_text(json.dumps({**json.loads(budget.read_text()), "lr": 1e-3}))
    calls = _count(monkeypatch)
    with pytest.raises(ValueError, match=r"dense_lora-s0\.json: .*run\.lr.*--overwrite"):
        compare.study(c, log=lambda *_: None)
    assert calls == []
    compare.study(study("a", methods=["wanda_lora"], seeds=[0], overwrite=True), log=lambda *_: None)
    assert calls == [("train", "dense", 0), ("prune", "wanda", 0)]
    with pytest.raises(ValueError, match=r"\['seed'\] are set by compare\.py"):
        budget.write_text(json.dumps({"seed": 3}))
        compare.study(c, log=lambda *_: None)


def test_s9_study_trains_a_missing_dense_model_again(study, monkeypatch):
    """A baseline still to run needs its seed's dense model on disk: when it is gone, the
    (cached) dense run is trained again, then pruned."""
    c = study("a", methods=["wanda_lora"], seeds=[0])
    compare.study(c, log=lambda *_: None)
    out = Path(c.out)
    shutil.rmtree(out / "models" / "dense-s0")
    (out / "runs" / "wanda_lora-50-s0.json").unlink()
    calls, logs = _count(monkeypatch), []
    compare.study(c, log=logs.append)
    assert calls == [("train", "dense", 0), ("prune", "wanda", 0)]
    assert any("its model is missing" in x for x in logs)


def test_s9_study_runs_an_equal_config_once(study, monkeypatch):
    """efx and efx_e16_e15 are the same train config under the project's defaults (E16, then
    E15): one training, two rows with the same numbers; efx_e16 is a run of its own."""
    calls, logs = _count(monkeypatch), []
    res = compare.study(study("a", methods=["efx", "efx_e16_e15", "efx_e16"], seeds=[0]), log=logs.append)
    assert calls == [("train", "dense", 0), ("train", "efx", 0), ("train", "efx", 0)]
    assert any("efx_e16_e15-50-s0: the same run as efx-50-s0" in x for x in logs)
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["efx"]["metrics"] == rows["efx_e16_e15"]["metrics"] != rows["efx_e16"]["metrics"]


def test_s9_study_curve_rows_measure_perplexity_only(study, monkeypatch):
    """--curve: more sparsities for the figure, run after every seed's main rows, with the
    curve's methods only and without the test tasks (no items, no % of dense); the paired
    perplexity difference against that sparsity's best baseline is still computed."""
    calls = _count(monkeypatch)
    res = compare.study(study("c", methods=["wanda_lora"], curve=[0.3], curve_methods=["wanda_lora", "efx_none"]),
                        log=lambda *_: None)
    assert calls == [("train", "dense", 0), ("prune", "wanda", 0), ("train", "dense", 1), ("prune", "wanda", 1),
                     ("prune", "wanda", 0), ("train", "efx", 0), ("prune", "wanda", 1), ("train", "efx", 1)]
    run = json.loads((Path(study("c").out) / "runs/efx_none-30-s1.json").read_text())
    assert run["items"] == [] and set(run["metrics"]) == {"ppl"} and len(run["window_nll"]) == 6
    assert run["zeros"] == pytest.approx(0.3, abs=0.01) and run["identity"]["eval"]["tests"] == "none"
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["wanda_lora @50%"]["rel"] is not None and rows["efx_none @30%"]["rel"] is None
    assert set(rows["efx_none @30%"]["vs_best"]) == {"ppl"}
    assert res["best_baseline"] == {0.5: "wanda_lora", 0.3: "wanda_lora"}
    line = next(x for x in res["table"].splitlines() if x.startswith("| efx_none | 30%"))
    assert line.split(" | ")[3:5] == ["-", "-"]             # qa/accuracy and qa/macro_f1


def test_s9_after_rows_prune_the_dense_model_once_with_foresight(study, monkeypatch):
    """foresight_after / efx_after: one ForeSight call (E6; E6 + E16) on the seed's dense LoRA
    model, no training of their own; different compensation, different weights. The contrasts
    whose two rows ran are paired differences (one seed: the difference of the two runs)."""
    calls = _count(monkeypatch)
    res = compare.study(study("f", methods=["sparsegpt_lora", "foresight_after", "efx_after"], seeds=[0]),
                        log=lambda *_: None)
    assert calls == [("train", "dense", 0), ("prune", "sparsegpt", 0), ("prune", "efx", 0), ("prune", "efx", 0)]
    runs = {m: json.loads((Path(study("f").out) / f"runs/{m}-50-s0.json").read_text())
            for m in ("sparsegpt_lora", "foresight_after", "efx_after")}
    for m, how in (("foresight_after", "none"), ("efx_after", "obs")):
        (call,) = runs[m]["train"]["prune_calls"]
        assert (call["method"], call["reconstruct"], call["pbs"]) == ("foresight", how, False)
        assert runs[m]["zeros"] == pytest.approx(0.5, abs=0.01) and runs[m]["identity"]["reuse_dense"]
    assert runs["foresight_after"]["window_nll"] != runs["efx_after"]["window_nll"]
    (con,) = res["contrasts"]
    assert (con["row"], con["without"], con["sparsity"]) == ("efx_after", "sparsegpt_lora", 0.5)
    for k in ("ppl", "qa/accuracy"):
        want = runs["efx_after"]["metrics"][k] - runs["sparsegpt_lora"]["metrics"][k]
        assert con["diff"][k]["diff"] == pytest.approx(want)
    assert "| ForeSight's mask against SparseGPT's, both with the OBS update (efx_after − sparsegpt_lora) | 50% |" \
        in res["table"]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_s9_baseline_reuse_equals_train_run_after(study, tmp_path, method):
    """method §8 baseline_order "after": pruning the saved dense LoRA model of seed 1 gives the
    same weights, bit for bit (torch.equal), as train.run(method, baseline_order="after", seed 1):
    the same trained weights (saved and loaded in float32 with the same layout), the same
    calibration windows and PruneOptions, one efx.prune call; B = 0 after the merge, so the
    adapters train.run still carries add exact zeros in the calibration forwards."""
    c = study("s", methods=[f"{method}_lora"], seeds=[1])
    base = compare.budget(c)
    fields = dict(base, train=c.train, eval=False, seed=1, sparsity=0.5, baseline_order="after")
    train.run({**fields, "method": "dense", "out": str(tmp_path / "dense")})
    ref = train.run({**fields, "method": method, "out": str(tmp_path / "ref")})["model"]
    cfg = train.TrainConfig(**{**fields, "method": method, "out": str(tmp_path / "reuse")})
    got, _, _ = compare.prune_dense(cfg, tmp_path / "dense" / "model")
    want, have = ref.state_dict(), got.state_dict()
    assert want.keys() == have.keys()
    for k in want:
        assert torch.equal(want[k], have[k]), f"{k}: max diff {(want[k] - have[k]).abs().max():.3g}"
    assert M.sparsity_of(have["model.layers.0.self_attn.q_proj.weight"])["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_s9_figure_skipped_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)         # import raises ImportError
    logs = []
    assert compare.figure([], tmp_path / "f.png", logs.append) is None
    assert logs == ["[compare] matplotlib is not installed: no f.png (pip install matplotlib)"]


def test_s9_figure_draws_every_method(tmp_path, monkeypatch):
    """With matplotlib installed, one PNG. Several sparsities: a line per method (dense LoRA
    the dashed one), no two drawn alike past the ten colours. One sparsity: a row per method
    named on the axis, the lowest perplexity at the top."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    ppl = lambda m: {"ppl": {"mean": m, "lo": m - 1, "hi": m + 1}}
    dense = [{"method": "dense_lora", "sparsity": 0.0, "metrics": ppl(16)}]
    names = [f"m{k}" for k in range(12)]
    seen, real = [], plt.Figure.savefig

    def save(fig, *a, **kw):
        ax = fig.axes[0]
        handles, labels = ax.get_legend_handles_labels()
        styles = [(h.lines[0].get_color(), h.lines[0].get_marker()) for h in handles[1:]]
        seen.append((labels, styles, [t.get_text() for t in ax.get_yticklabels()]))
        return real(fig, *a, **kw)
    monkeypatch.setattr(plt.Figure, "savefig", save)
    rows = dense + [{"method": m, "sparsity": s, "metrics": ppl(16 + 60 * s + k)}
                    for k, m in enumerate(names) for s in (0.3, 0.5)]
    path = compare.figure(rows, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels, styles, _ = seen[-1]
    assert labels == ["dense_lora"] + names and len(set(styles)) == 12
    rows = dense + [{"method": m, "sparsity": 0.5, "metrics": ppl(p)} for m, p in [("a", 30), ("b", 20), ("c", 40)]]
    compare.figure(rows, tmp_path / "g.png")
    assert seen[-1][0] == ["dense_lora"] and seen[-1][2] == ["c (50 %)", "a (50 %)", "b (50 %)"]


def test_s9_dense_start_row_and_every_baseline_against_the_efx_rows(study, monkeypatch):
    """dense_start is evaluated untrained (not dense_lora's twin; the first contrast is the
    fine-tuning's gain); prune-then-LoRA runs train.run with the mask held; every EFX row is
    set against every baseline, with one sign per seed."""
    calls = _count(monkeypatch)
    res = compare.study(study("b", methods=["dense_start", "wanda_lora", "wanda_before", "efx_none",
                                            "efx_e16"], seeds=[0, 1]), log=lambda *_: None)
    assert ("train", "wanda", 0) in calls and ("prune", "wanda", 0) in calls   # before trains; _lora reuses
    by = {(r["method"], r["sparsity"]): r for r in res["rows"]}
    start, dense = by["dense_start", 0.0], by["dense_lora", 0.0]
    assert start["metrics"]["ppl"]["mean"] != dense["metrics"]["ppl"]["mean"]
    assert res["contrasts"][0]["row"] == "dense_lora" and res["contrasts"][0]["without"] == "dense_start"
    pairs = {(x["row"], x["baseline"]) for x in res["per_baseline"]}
    assert pairs == {("efx_e16", "wanda_lora"), ("efx_e16", "wanda_before")}
    x = res["per_baseline"][0]
    a, b = by[x["row"], 0.5]["per_seed"]["ppl"], by[x["baseline"], 0.5]["per_seed"]["ppl"]
    assert x["seed_signs"]["ppl"] == "".join("+" if p > q else "-" if p < q else "0" for p, q in zip(a, b))
    assert "efx_e16 − wanda_before" in res["table"]
    # the cost of each row's model against its seed's dense LoRA training (evaluation not counted)
    recs = {p.stem: json.loads(p.read_text()) for p in (Path(res["config"]["out"]) / "runs").iterdir()}
    fit = lambda name: recs[name]["wall_s"] - recs[name]["eval_s"]
    ratio = lambda row, extra: np.mean([(fit(f"{row}-s{s}") + extra * fit(f"dense_lora-s{s}")) / fit(f"dense_lora-s{s}")
                                        for s in (0, 1)])
    assert by["dense_lora", 0.0]["time_x_dense"] == pytest.approx(1.0)
    assert by["wanda_before", 0.5]["time_x_dense"] == pytest.approx(ratio("wanda_before-50", 0))    # trains
    assert by["wanda_lora", 0.5]["time_x_dense"] == pytest.approx(ratio("wanda_lora-50", 1))        # + dense
    assert "time × dense LoRA" in res["table"]


def test_s9_study_with_an_nm_budget_prunes_every_row_to_the_pattern(study):
    """A budget with nm = "2:4" makes every pruned row 2:4 (train.py ignores --sparsity then),
    and the table says so above its first line."""
    c = study("nm", methods=["wanda_lora", "efx_none"], seeds=[0])
    budget = Path(c.train_config)
    plain_budget = budget.read_text()
    budget.write_text(json.dumps({**json.loads(plain_budget), "nm": "2:4"}))
    res = compare.study(c, log=lambda *_: None)
    assert res["table"].startswith("Every pruned row is 2:4 semi-structured")
    assert res["table"].count("| method | sparsity |") == 1
    for name in ("wanda_lora-50-s0", "efx_none-50-s0"):
        run = json.loads((Path(c.out) / "runs" / f"{name}.json").read_text())
        assert run["config"]["nm"] == "2:4" and run["zeros"] == pytest.approx(0.5, abs=0.01)
    budget.write_text(plain_budget)
    plain = compare.study(study("plain", methods=["wanda_lora"], seeds=[0]), log=lambda *_: None)
    assert plain["table"].startswith("| method | sparsity |")


def test_s9_ramp_variant_row_prunes_up_the_cubic_ramp(study, monkeypatch):
    """efx_e16_ramp is efx_e16 with sparsity_ramp "cubic": its own training (not efx_e16's
    twin), its intermediate call at rho (1 - (1 - 1/2)^3) = 0.4375 of two calls, the final at
    the target; the contrast against efx_e16 is their paired difference."""
    calls = _count(monkeypatch)
    res = compare.study(study("r", methods=["efx_e16", "efx_e16_ramp"], seeds=[0]), log=lambda *_: None)
    assert calls == [("train", "dense", 0), ("train", "efx", 0), ("train", "efx", 0)]
    runs = {m: json.loads((Path(study("r").out) / f"runs/{m}-50-s0.json").read_text())
            for m in ("efx_e16", "efx_e16_ramp")}
    got = {m: [c["overall_sparsity"] for c in r["train"]["prune_calls"]] for m, r in runs.items()}
    assert got["efx_e16"] == pytest.approx([0.5, 0.5], abs=0.02)
    assert got["efx_e16_ramp"] == pytest.approx([0.4375, 0.5], abs=0.02)
    (con,) = res["contrasts"]
    assert (con["row"], con["without"]) == ("efx_e16_ramp", "efx_e16")
    want = runs["efx_e16_ramp"]["metrics"]["ppl"] - runs["efx_e16"]["metrics"]["ppl"]
    assert con["diff"]["ppl"]["diff"] == pytest.approx(want)


def test_s9_variant_rows_change_one_thing_each(study, monkeypatch):
    """Each E16 variant reaches the run it names, and only there: eta = 1 in every score
    average (E7), E15 through a fresh B after E16, calls at epoch boundaries only (2 epochs:
    two calls, where efx_e16 prunes every step; every 16 steps: only the final call in this
    short run), calibration on the training data. Each is
    set against efx_e16 in the contrasts."""
    variants = ["efx_e16_e15", "efx_e16_eta1", "efx_e16_epochs", "efx_e16_every16", "efx_e16_calib_train"]
    c = study("v", methods=["efx_e16"] + variants, seeds=[0])
    budget = Path(c.train_config)
    budget.write_text(json.dumps({**json.loads(budget.read_text()), "prune_every_steps": 1}))
    calib_text = Path(json.loads(budget.read_text())["calib"]).read_text()
    seen, real_avg, real_gram, run_now = [], efx.average_score, efx.gram_pbs_update, []
    real_run = train.run

    def run(cfg, *a, **kw):
        run_now[:] = [cfg.out]
        return real_run(cfg, *a, **kw)

    def avg(S, prev, mask_lr=0.5):
        seen.append((Path(run_now[0]).name, "eta", mask_lr))
        return real_avg(S, prev, mask_lr)

    def gram(*a, **kw):
        seen.append((Path(run_now[0]).name, "gram", None))
        return real_gram(*a, **kw)
    monkeypatch.setattr(train, "run", run)
    monkeypatch.setattr(efx, "average_score", avg)
    monkeypatch.setattr(efx, "gram_pbs_update", gram)
    res = compare.study(c, log=lambda *_: None)
    runs = {m: json.loads((Path(c.out) / f"runs/{m}-50-s0.json").read_text()) for m in ["efx_e16"] + variants}
    etas = lambda m: {x[2] for x in seen if x[:2] == (f"{m}-50-s0", "eta")}
    assert etas("efx_e16") == {0.5} and etas("efx_e16_eta1") == {1.0}
    assert {x[0] for x in seen if x[1] == "gram"} == {"efx_e16_e15-50-s0"}
    assert all(p["pbs"] and p["reconstruct"] == "obs" for p in runs["efx_e16_e15"]["train"]["prune_calls"])
    calls = {m: len(r["train"]["prune_calls"]) for m, r in runs.items()}
    assert calls["efx_e16_epochs"] == 2 and calls["efx_e16"] == 4 == calls["efx_e16_eta1"]
    assert calls["efx_e16_every16"] == 1
    corpus = {m: (r["train"]["calibration"]["corpus"], r["identity"]["data"]["calib"]) for m, r in runs.items()}
    assert corpus["efx_e16_calib_train"] == ("train", "train")
    assert corpus["efx_e16"] == (json.loads(budget.read_text())["calib"], compare._digest(calib_text))
    assert [(x["row"], x["without"]) for x in res["contrasts"]] == [(m, "efx_e16") for m in variants]
