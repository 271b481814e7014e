"""Sweep reports on synthetic records with known relations: correlations, failures, files."""

import csv
import dataclasses
import math
import random
import statistics

import pytest
from dglbench.errors import DglbenchError
from dglbench.layout import RunLayout, read_trial_records, write_trial_records
from dglbench.record import VictimRecord
from dglbench.runner import run_trial
from dglbench.sweep.report import correlation_table, load_rows, ranking, write_report
from dglbench.trial import TrialConfig

N_PER_TRIAL = 10
SIGMAS = (0.001, 0.01, 0.1)


@pytest.fixture(scope="module")
def template() -> VictimRecord:
    """One real victim record (run_trial's); the tests put synthetic numbers into copies of it."""
    cfg = TrialConfig.from_dict(
        {"dataset_params": {"num_victims": 1, "image_size": 8}, "lpips": False, "attack_params": {"max_iterations": 2}}
    )
    (record,) = run_trial(cfg, progress=False)
    assert record.ok and record.estimate and record.metrics
    return record


def synthetic(template: VictimRecord, v: dict, **fields) -> VictimRecord:
    """A copy of the real record with synthetic I2F and attack numbers (``v``: lb, exact, l2, ssim, failed)."""
    estimate = dataclasses.replace(template.estimate, lower_bound=v["lb"], exact={"0.1": v["exact"]})
    rmse = v["l2"] / 8
    values = {"l2_error": v["l2"], "rmse": rmse, "mse": rmse**2, "psnr": -20 * math.log10(rmse), "ssim": v["ssim"]}
    outcomes = [dataclasses.replace(a, metrics={**a.metrics, **values, "lpips_alex": None}) for a in template.attacks]
    rec = dataclasses.replace(template, estimate=estimate, **fields).with_attacks(outcomes)
    if v.get("failed"):
        rec = dataclasses.replace(rec, status="failed", reason="attack: synthetic failure")
    return rec


def write_trial(folder, template, model, sigma, victims):
    """A trial record file with synthetic victims: each a dict of lb, exact, l2, ssim and optional status."""
    cfg = TrialConfig.from_dict(
        {**template.config, "model": model, "defense": "gaussian", "defense_params": {"sigma": sigma}}
    )
    records = [
        synthetic(template, v, victim_id=j, trial_id=cfg.trial_id, config=cfg.to_dict()) for j, v in enumerate(victims)
    ]
    write_trial_records(RunLayout(folder).trial_record(cfg.trial_id), cfg.trial_id, cfg.to_dict(), records)


def synthetic_sweep(folder, template, n_random: int = 200) -> dict:
    rng = random.Random(0)
    truth = {"lb": []}
    # convnet5: attack error a strictly increasing power law of the I2F lower bound, 3 failed victims
    for sigma in SIGMAS:
        victims = []
        for _ in range(N_PER_TRIAL):
            x = 10 ** rng.uniform(-3, 1)
            truth["lb"].append(x)
            victims.append({"lb": x, "exact": x / (1 + x), "l2": 3 * x**0.7, "ssim": 1 / (1 + x)})
        # a failed victim whose numbers would break the relation if they were used
        victims.append({"lb": 1e3, "exact": 1e3, "l2": 1e-4, "ssim": 0.999, "failed": True})
        write_trial(folder, template, "convnet5", sigma, victims)
    # mlp_1x256: independent columns
    victims = [
        {"lb": 10 ** rng.uniform(-3, 1), "exact": rng.random(), "l2": 10 ** rng.uniform(-1, 1), "ssim": rng.random()}
        for _ in range(n_random)
    ]
    write_trial(folder, template, "mlp_1x256", 0.01, victims)
    return truth


def row(table, arch, predictor, target):
    group = "all" if arch == "all" else f"architecture={arch}"
    scope = "pooled" if arch == "all" else "group"
    (r,) = [
        r for r in table if (r["scope"], r["group"], r["predictor"], r["target"]) == (scope, group, predictor, target)
    ]
    return r


def test_known_relations_and_failures(tmp_path, template):
    truth = synthetic_sweep(tmp_path, template)
    rows = load_rows(tmp_path)
    assert len(rows) == 3 * (N_PER_TRIAL + 1) + 200
    table = correlation_table(rows, bootstrap=50)
    n_ok = 3 * N_PER_TRIAL
    for target, sign in (("l2_error", 1), ("rmse", 1), ("psnr", -1)):
        r = row(table, "convnet5", "lower_bound", target)
        assert (r["n"], r["failed"], r["dropped"]) == (n_ok, 3, 0)
        assert r["spearman"] == pytest.approx(sign) and r["kendall"] == pytest.approx(sign)
        # power law: log error is linear in log I2F; PSNR is linear in log10 I2F
        assert r["pearson_log"] == pytest.approx(sign, abs=1e-9)
        assert r["spearman_ci"] == pytest.approx([sign, sign]) and r["kendall_ci"] == pytest.approx([sign, sign])
    r = row(table, "convnet5", "lower_bound", "ssim")  # strictly decreasing, not a power law
    assert r["spearman"] == pytest.approx(-1) and r["kendall"] == pytest.approx(-1) and r["pearson_log"] > -1
    r = row(table, "convnet5", "exact@0.1", "l2_error")  # strictly increasing, not a power law
    assert r["spearman"] == pytest.approx(1) and r["kendall"] == pytest.approx(1) and r["pearson_log"] < 1
    for target in ("l2_error", "psnr", "ssim"):
        r = row(table, "mlp_1x256", "lower_bound", target)
        assert r["n"] == 200 and r["failed"] == 0
        assert abs(r["spearman"]) < 0.2 and abs(r["kendall"]) < 0.2 and abs(r["pearson_log"]) < 0.2, r
        lo, hi = r["spearman_ci"]
        assert lo < r["spearman"] < hi
    pooled = row(table, "all", "lower_bound", "l2_error")
    assert (pooled["n"], pooled["failed"]) == (n_ok + 200, 3)
    assert not [r for r in table if r["target"].startswith("lpips")]  # no LPIPS values: no LPIPS rows

    rank = {r["architecture"]: r for r in ranking(rows)}
    assert rank["convnet5"]["median_i2f_lb"] == pytest.approx(statistics.median(truth["lb"]))
    assert (rank["convnet5"]["n"], rank["convnet5"]["failed"]) == (n_ok, 3)


def test_report_files(tmp_path, template):
    synthetic_sweep(tmp_path, template)
    rep = write_report(tmp_path, bootstrap=50)
    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    assert "| architecture=convnet5 | lower_bound | l2_error | 30 | 3 | +1.000 [+1.00, +1.00] | +1.000" in md
    assert "233 victims in 4 trials (3 failed)" in md and "attack: synthetic failure" in md
    assert "| architecture=convnet5 | lower_bound | psnr |" not in md  # PSNR mirrors the error: CSV only

    with (out / "correlations.csv").open() as fh:
        parsed = list(csv.DictReader(fh))
    assert len(parsed) == len(rep["table"])
    (r,) = [
        r
        for r in parsed
        if (r["scope"], r["group"], r["predictor"], r["target"])
        == ("group", "architecture=convnet5", "lower_bound", "psnr")
    ]
    assert (int(r["n"]), int(r["failed"]), int(r["dropped"])) == (30, 3, 0)
    assert float(r["spearman"]) == pytest.approx(-1) and float(r["pearson_log"]) == pytest.approx(-1)
    assert float(r["spearman_lo"]) <= float(r["spearman"]) <= float(r["spearman_hi"])

    tex = (out / "correlations.tex").read_text()
    assert tex.startswith(r"\begin{tabular}") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"architecture=convnet5 & lower\_bound & l2\_error & 30 & 3 & 1.000 & 1.000 & 1.000 \\" in tex

    for stem in ("i2f_vs_error", "metric_vs_strength", "risk_ranking", "groups"):
        png, pdf = (out / f"{stem}.png").read_bytes(), (out / f"{stem}.pdf").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
        assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert set(rep["paths"]) == {"markdown", "csv", "latex", "scatter", "strength", "ranking", "groups"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def strip(folder, *sections):
    """Turn the records into estimate-only (attacks) or attack-only (estimate) records."""
    for path in RunLayout(folder).trial_records():
        records = read_trial_records(path)
        empty = {"attacks": (), "worst": None, "estimate": None}
        records = [dataclasses.replace(r, **{k: empty[k] for k in sections}) for r in records]
        write_trial_records(path, records[0].trial_id, records[0].config, records)


def test_estimate_only_sweep_reports_the_ranking(tmp_path, template):
    victims = [{"lb": v, "exact": v, "l2": 1.0, "ssim": 0.5} for v in (0.1, 0.2, 0.3)]
    write_trial(tmp_path, template, "mlp_1x256", 0.01, [*victims, {**victims[0], "failed": True}])
    write_trial(tmp_path, template, "convnet5", 0.01, [{**v, "lb": 10 * v["lb"]} for v in victims])
    strip(tmp_path, "attacks", "worst")
    rep = write_report(tmp_path, bootstrap=0)
    assert set(rep["paths"]) == {"markdown", "csv", "latex", "ranking"}  # no attack: no scatter, no strength plot
    assert [(r["architecture"], r["median_i2f_lb"], r["n"], r["failed"]) for r in rep["ranking"]] == [
        ("mlp_1x256", 0.2, 3, 1),
        ("convnet5", pytest.approx(2.0), 3, 0),
    ]
    assert "| 1 | mlp_1x256 | 0.2 | – | 3 | 1 |" in (tmp_path / "report" / "report.md").read_text()


def test_ranking_plot_of_undefended_trials(tmp_path, template):
    """No defense: δ = 0, so every I2F is exactly 0, which a log axis cannot show."""
    write_trial(tmp_path, template, "convnet5", 0.01, [{"lb": 0.0, "exact": 0.0, "l2": 0.1, "ssim": 0.9}] * 3)
    rep = write_report(tmp_path, bootstrap=0)
    assert rep["ranking"][0]["median_i2f_lb"] == 0.0
    assert rep["paths"]["ranking"].stat().st_size > 0 and rep["paths"]["strength"].stat().st_size > 0


def test_attack_only_records_are_not_counted_as_failed(tmp_path, template):
    victims = [{"lb": 1.0, "exact": 1.0, "l2": v, "ssim": 0.5} for v in (1.0, 2.0, 3.0)]
    write_trial(tmp_path, template, "convnet5", 0.01, victims)
    strip(tmp_path, "estimate")
    rows = load_rows(tmp_path)
    assert all(r.predictors["lower_bound"] is None for r in rows)
    assert ranking(rows) == []
    rep = write_report(tmp_path, bootstrap=0)
    assert "0 failed" in rep["markdown"] and set(rep["paths"]) == {"markdown", "csv", "latex", "strength", "ranking"}


def test_empty_sweep_folder_is_an_error(tmp_path):
    with pytest.raises(DglbenchError, match="no trial records"):
        write_report(tmp_path)


def test_the_suites_worst_case_is_the_default_attack_and_one_attack_can_be_selected(tmp_path, template):
    """Two attacks per victim: the report's errors are the per-victim worst case unless one attack is named."""
    cfg = TrialConfig.from_dict({**template.config, "defense": "gaussian", "defense_params": {"sigma": 0.01}})
    first = template.attacks[0]
    records = []
    for j, (l2_first, l2_second) in enumerate([(1.0, 4.0), (5.0, 2.0), (3.0, 3.5)]):
        outcomes = [
            dataclasses.replace(first, metrics={**first.metrics, "l2_error": l2_first}),
            dataclasses.replace(first, name="dlg", key="dlg", metrics={**first.metrics, "l2_error": l2_second}),
        ]
        records.append(
            dataclasses.replace(template, victim_id=j, trial_id=cfg.trial_id, config=cfg.to_dict()).with_attacks(
                outcomes
            )
        )
    write_trial_records(RunLayout(tmp_path).trial_record(cfg.trial_id), cfg.trial_id, cfg.to_dict(), records)
    assert [r.targets["l2_error"] for r in load_rows(tmp_path)] == [1.0, 2.0, 3.0]  # min per victim
    assert [r.targets["l2_error"] for r in load_rows(tmp_path, "worst")] == [1.0, 2.0, 3.0]
    assert [r.targets["l2_error"] for r in load_rows(tmp_path, "dlg")] == [4.0, 2.0, 3.5]
    assert [r.targets["l2_error"] for r in load_rows(tmp_path, "ig_sign")] == [None, None, None]  # not run
    md = write_report(tmp_path, bootstrap=0, plots=False)["markdown"]
    assert "worst case per victim over each trial's optimization attacks (up to 2 attacks)" in md
    assert "of the attack 'dlg'" in write_report(tmp_path, bootstrap=0, plots=False, attack="dlg")["markdown"]


def test_closed_form_attacks_are_left_out_of_the_correlated_worst_case(tmp_path, template):
    """A closed-form attack's exact copy never becomes the error I2F is correlated with; naming one is refused."""
    cfg = TrialConfig.from_dict({**template.config, "defense": "gaussian", "defense_params": {"sigma": 0.01}})
    first = template.attacks[0]
    ok = dataclasses.replace(template, trial_id=cfg.trial_id, config=cfg.to_dict())
    records = []
    # victim 0: IG 3.0, analytic 0.001 (exact); victim 1: IG failed, analytic 0.002; victim 2: IG 5.0, no analytic
    for j, (ig, analytic) in enumerate([(3.0, 0.001), (None, 0.002), (5.0, None)]):
        outcomes = [
            dataclasses.replace(first, metrics={**first.metrics, "l2_error": ig})
            if ig is not None
            else dataclasses.replace(first, status="failed", reason="diverged", metrics=None)
        ]
        if analytic is not None:
            outcomes.append(
                dataclasses.replace(
                    first,
                    name="analytic_linear",
                    key="analytic_linear",
                    metrics={**first.metrics, "l2_error": analytic},
                )  # fmt: skip
            )
        records.append(dataclasses.replace(ok, victim_id=j).with_attacks(outcomes))
    assert [r.metric("l2_error") for r in records] == [0.001, 0.002, 5.0]  # the record's own worst case keeps it
    write_trial_records(RunLayout(tmp_path).trial_record(cfg.trial_id), cfg.trial_id, cfg.to_dict(), records)
    rows = load_rows(tmp_path)
    assert [r.targets["l2_error"] for r in rows] == [3.0, None, 5.0]
    assert [r.status for r in rows] == ["ok", "failed", "ok"]
    assert "no optimization attack in the suite succeeded" in rows[1].reason
    assert [r.closed_form for r in rows] == [("analytic_linear",), ("analytic_linear",), ()]
    md = write_report(tmp_path, bootstrap=0, plots=False)["markdown"]
    assert "Closed-form attacks (analytic_linear) are left out of the attack errors" in md
    with pytest.raises(DglbenchError, match="'analytic_linear' is closed-form"):
        load_rows(tmp_path, "analytic_linear")
