"""Reports grouped by what was swept, findings first: synthetic records whose truth is known by construction.

Truths: the generating exponent of a power law, groups with opposite monotone trends built by hand, a
ranking worked out by hand, scipy's Kendall τ for the bootstrap's vectorized one, and each defense's own
fields for its declared strength parameter.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from dglbench.defenses import DEFENSES
from dglbench.layout import RunLayout, write_trial_records
from dglbench.metrics import _rowwise_kendall
from dglbench.record import VictimRecord
from dglbench.runner import run_trial
from dglbench.sweep.findings import calibration, loglog_slope, ranking_agreement
from dglbench.sweep.report import correlation_table, findings, load_rows, strength_of, write_report
from dglbench.trial import TrialConfig
from scipy import stats


@pytest.fixture(scope="module")
def template() -> VictimRecord:
    """One real victim record (run_trial's); the tests put synthetic numbers into copies of it."""
    cfg = TrialConfig.from_dict(
        {"dataset_params": {"num_victims": 1, "image_size": 8}, "lpips": False, "attack_params": {"max_iterations": 2}}
    )
    (record,) = run_trial(cfg, progress=False)
    assert record.ok and record.estimate and record.metrics
    return record


def victim(template: VictimRecord, lb: float, l2: float, **fields) -> VictimRecord:
    """A copy of the real record whose only I2F term is ``lb`` (lower bound and exact at 0.1) and error ``l2``."""
    estimate = dataclasses.replace(
        template.estimate, lower_bound=lb, exact={"0.1": lb}, exact_lower_bound={}, exact_rescaled={},
        exact_rescaled_layer={},
    )  # fmt: skip
    values = {"l2_error": l2, "rmse": l2 / 8, "psnr": -20 * math.log10(l2 / 8), "ssim": 0.5}
    outcomes = [dataclasses.replace(a, metrics={**a.metrics, **values, "lpips_alex": None}) for a in template.attacks]
    return dataclasses.replace(template, estimate=estimate, **fields).with_attacks(outcomes)


def write(folder, template, settings: dict, points: list[tuple[float, float]]) -> str:
    """One trial of ``settings`` (merged into the template's config) with victims at (lower bound, error) points."""
    cfg = TrialConfig.from_dict({**template.config, **settings})
    records = [
        victim(template, lb, l2, victim_id=j, trial_id=cfg.trial_id, config=cfg.to_dict())
        for j, (lb, l2) in enumerate(points)
    ]
    write_trial_records(RunLayout(folder).trial_record(cfg.trial_id), cfg.trial_id, cfg.to_dict(), records)
    return cfg.trial_id


def gaussian(sigma: float, **more) -> dict:
    return {"defense": "gaussian", "defense_params": {"sigma": sigma}, **more}


INITS = ("uniform", "normal", "kaiming", "xavier")


def test_an_init_axis_gives_one_row_per_init_and_the_strength_is_not_a_group(tmp_path, template):
    for k, init in enumerate(INITS):
        for sigma in (0.001, 0.01):
            write(
                tmp_path,
                template,
                gaussian(sigma, init=init),
                [(sigma * (k + j + 1), sigma * (k + j + 2)) for j in range(4)],
            )
    rows = load_rows(tmp_path)
    assert {r.group_keys for r in rows} == {("init",)}
    assert {r.strength for r in rows} == {0.001, 0.01} and {r.strength_name for r in rows} == {"defense_params.sigma"}
    table = correlation_table(rows, bootstrap=0)
    groups = [r for r in table if (r["scope"], r["predictor"], r["target"]) == ("group", "lower_bound", "l2_error")]
    assert sorted(r["group"] for r in groups) == sorted(f"init={i}" for i in INITS)
    assert all(r["n"] == 8 for r in groups)
    pooled = [r for r in table if (r["scope"], r["predictor"], r["target"]) == ("pooled", "lower_bound", "l2_error")]
    assert [r["n"] for r in pooled] == [32]
    levels = [r for r in table if (r["scope"], r["predictor"]) == ("level", "lower_bound")]
    assert sorted((r["level"], r["n"]) for r in levels) == [(0.001, 16), (0.01, 16)]
    md = write_report(tmp_path, bootstrap=0, plots=False)["markdown"]
    assert md.index("## Findings") < md.index("| group |")  # the finding comes before the table
    assert "Grouped by what the sweep varied: init; strength axis: sigma." in md
    for init in INITS:
        assert f"| init={init} | lower_bound | l2_error | 8 | 0 |" in md


def test_a_known_power_law_gives_its_slope_with_an_interval_that_covers_it(tmp_path, template):
    rng = np.random.default_rng(0)
    x = 10 ** rng.uniform(-3, 0, size=40)
    y = 2.0 * x**0.5 * np.exp(rng.normal(0, 0.1, size=40))  # log-normal scatter around y = 2 x^0.5
    write(tmp_path, template, gaussian(0.01), list(zip(x.tolist(), y.tolist())))
    rep = write_report(tmp_path, bootstrap=0, plots=False)
    (fit,) = rep["findings"]["slopes"]
    lo, hi = fit["slope_ci"]
    assert lo < 0.5 < hi and hi - lo < 0.1 and fit["n"] == 40
    assert abs(fit["intercept"] - math.log10(2.0)) < 0.05
    assert f"convnet5 {fit['slope']:.2f} [{lo:.2f}, {hi:.2f}] (n = 40)" in rep["markdown"]
    exact = loglog_slope([1, 10, 100], [3, 3 * 10**0.7, 3 * 100**0.7])  # no scatter: the exponent exactly
    assert exact["slope"] == pytest.approx(0.7) and exact["slope_ci"] == pytest.approx([0.7, 0.7])
    assert loglog_slope([1, 1, 1], [1, 2, 3])["slope"] is None  # no spread in x: no slope


def test_a_pooled_rho_that_hides_opposite_trends_is_reported_per_group(tmp_path, template):
    up = [(v, v) for v in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]  # error rises with I2F
    down = [(v, 7.0 - v) for v in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]  # error falls with I2F
    write(tmp_path, template, gaussian(0.01, init="uniform"), up)
    write(tmp_path, template, gaussian(0.01, init="xavier"), down)
    rows = load_rows(tmp_path)
    table = correlation_table(rows, bootstrap=200)
    by = {(r["scope"], r["group"]): r for r in table if (r["predictor"], r["target"]) == ("lower_bound", "l2_error")}
    assert by[("group", "init=uniform")]["spearman"] == pytest.approx(1.0)
    assert by[("group", "init=xavier")]["spearman"] == pytest.approx(-1.0)
    assert abs(by[("pooled", "all")]["spearman"]) < 0.3  # pooled, the two trends cancel
    text = " ".join(findings(rows, table, bootstrap=0)["text"])
    assert "hides opposite trends: ρ > 0 in init=uniform and ρ < 0 in init=xavier" in text


def test_simpson_groups_falling_inside_but_rising_pooled_are_named(tmp_path, template):
    low = [(1.0, 2.0), (2.0, 1.5), (3.0, 1.0)]  # falling inside each group ...
    high = [(10.0, 20.0), (20.0, 15.0), (30.0, 10.0)]  # ... rising across the two
    write(tmp_path, template, gaussian(0.01, init="uniform"), low)
    write(tmp_path, template, gaussian(0.01, init="normal"), high)
    rows = load_rows(tmp_path)
    table = correlation_table(rows, bootstrap=0)
    text = " ".join(findings(rows, table, bootstrap=0)["text"])
    assert "The pooled ρ has the opposite sign of the groups': read the groups." in text


def test_ranking_agreement_and_calibration_worked_by_hand():
    # medians: a (I2F 2, error 30), b (I2F 1, error 10), c (I2F 3, error 20)
    r = ranking_agreement({"a": ([1, 2, 3], [30, 30, 30]), "b": ([1], [10]), "c": ([3, 3], [10, 30])})
    assert r["by_i2f"] == ["b", "a", "c"] and r["by_attack"] == ["b", "c", "a"] and not r["agree"]
    # pairs (a,b): I2F +, error + ; (a,c): I2F -, error + ; (b,c): +, + -> (2 - 1) / 3
    assert r["kendall"] == pytest.approx(1 / 3)
    c = calibration([1, 2, 4, 0, None], [3, 2, 2, 5, 1], bootstrap=0)  # ratios 3, 1, 0.5; the rest dropped
    assert (c["n"], c["ratio"], c["at_least"]) == (3, 1.0, 2)


def test_the_bootstraps_kendall_is_scipys_on_resamples_with_ties():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 30).astype(float)
    idx = rng.integers(0, 30, size=(64, 30))
    ours = _rowwise_kendall(x[idx], y[idx], max_elements=5000)  # several chunks
    ref = [stats.kendalltau(a, b).statistic for a, b in zip(x[idx], y[idx])]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_every_defense_declares_a_strength_among_its_fields():
    for name in DEFENSES.list():
        cls = DEFENSES.get(name)
        declared = getattr(cls, "strength", None)
        if declared is not None:
            assert declared in {f.name for f in dataclasses.fields(cls)}, name
    assert strength_of("gaussian", {"sigma": 0.1}) == 0.1
    assert strength_of("eigen_noise", {"ranks": 3, "scale": 0.01}) == 0.01  # ranks is a grouping key, not strength
    assert strength_of("pruning", {"ratio": 0.9}) == 0.9 and strength_of("none", {}) is None


def test_the_reconstruction_figure_puts_the_recorded_images_in_their_places(tmp_path, template):
    """Originals on top, then one row per (group, level); each cell the saved pixels of that trial and victim."""
    from dglbench.layout import load_reconstructions, save_reconstructions
    from dglbench.sweep.plots import reconstruction_mosaic

    h = w = 4
    trials = {}
    for init in ("uniform", "normal"):
        for sigma in (0.001, 0.01):
            tid = write(tmp_path, template, gaussian(sigma, init=init), [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)])
            trials[(init, sigma)] = tid
            for v in range(3):
                gen = np.random.default_rng(100 * len(trials) + v)
                original = torch.as_tensor(np.full((1, 1, h, w), (v + 1) / 10), dtype=torch.float32)
                recon = torch.as_tensor(gen.random((1, 1, h, w)), dtype=torch.float32)
                save_reconstructions(RunLayout(tmp_path).images(tid).victim(v), original, {"ig": recon}, worst="ig")
    rows = load_rows(tmp_path)
    found = reconstruction_mosaic(rows, tmp_path, pad=1)
    # rows, worked out by hand: the originals, then groups in natural order (normal, uniform), levels ascending
    assert found["labels"] == [
        "convnet5: original", "init=normal, sigma = 0.001", "init=normal, sigma = 0.01",
        "init=uniform, sigma = 0.001", "init=uniform, sigma = 0.01",
    ]  # fmt: skip
    assert found["victims"] == [0, 1, 2] and found["mosaic"].shape == (1 + 5 * 5, 1 + 3 * 5)
    order = [None, ("normal", 0.001), ("normal", 0.01), ("uniform", 0.001), ("uniform", 0.01)]
    for r, key in enumerate(order):
        for c in range(3):
            y0, x0 = 1 + r * 5, 1 + c * 5
            cell = found["mosaic"][y0 : y0 + h, x0 : x0 + w]
            tid = trials[key or ("uniform", 0.001)]
            saved = load_reconstructions(RunLayout(tmp_path).images(tid).directory, c)
            expect = saved["original" if key is None else "worst"][0, 0].numpy()
            np.testing.assert_array_equal(cell, expect)
            assert np.all(found["mosaic"][y0 - 1, x0 - 1 : x0 + w] == 1.0)  # white padding above each cell
    rep = write_report(tmp_path, bootstrap=0)
    assert rep["paths"]["reconstructions"].read_bytes().startswith(b"\x89PNG")


def test_groups_whose_error_reaches_the_mean_image_floor_are_named(tmp_path, template):
    floor = template.floors["mean_image"]["l2_error"]
    write(
        tmp_path, template, gaussian(0.01, init="uniform"), [(1.0, floor / 100), (2.0, floor / 50), (3.0, floor / 20)]
    )
    write(tmp_path, template, gaussian(0.01, init="xavier"), [(1.0, floor * 1.5), (2.0, floor * 2), (3.0, floor * 3)])
    rows = load_rows(tmp_path)
    text = " ".join(findings(rows, correlation_table(rows, bootstrap=0), bootstrap=0)["text"])
    assert f"init=xavier ({floor * 2:.3g} against {floor:.3g})" in text and "init=uniform (" not in text


def test_the_demo_prints_the_findings_and_the_reports_path_not_the_table(tmp_path, template, capsys):
    from dglbench.sweep.cli import _report

    write(tmp_path, template, gaussian(0.001), [(1.0, 2.0), (2.0, 3.0), (3.0, 5.0)])
    write(tmp_path, template, gaussian(0.01), [(10.0, 20.0), (20.0, 30.0), (30.0, 50.0)])
    rep = _report(tmp_path, 0, headline=True)
    printed = capsys.readouterr().out
    assert printed.startswith("- 6 victims in 2 trials (0 failed).")
    assert "pooled over all victims ρ = +1.00 (n = 6)" in printed
    assert f"full report: {rep['paths']['markdown']}" in printed and "| group |" not in printed
