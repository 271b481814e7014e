"""``make bench-gpu`` runs on a CPU at reduced size, so the script is not dead code where no GPU is at hand."""

import pytest
from dglbench import bench_gpu


@pytest.mark.slow
def test_quick_run_on_this_machine_reports_every_measurement():
    body = bench_gpu.run(quick=True, ddp=False)
    assert "| convnet5 | 1×28×28 |" in body and "| cifar_resnet20 | 3×32×32 |" in body
    assert "NOT converged" not in body
    assert "Inverting Gradients on convnet5" in body and "victim-it/s" in body


def test_record_trees_differ_only_beyond_tolerance_and_ignore_timings():
    a = {"victims": [{"i2f": {"lower_bound": 2.0, "exact": {"0.1": 3.0}}, "seconds": {"total": 1.0}}]}
    b = {"victims": [{"i2f": {"lower_bound": 2.0 * (1 + 1e-6), "exact": {"0.1": 3.0}}, "seconds": {"total": 7.0}}]}
    assert bench_gpu.compare_record_trees(a, b) == []
    c = {"victims": [{"i2f": {"lower_bound": 2.1, "exact": {}}, "seconds": {"total": 1.0}}]}
    assert bench_gpu.compare_record_trees(a, c) == [".victims[0].i2f.exact.0.1", ".victims[0].i2f.lower_bound"]


@pytest.mark.slow
def test_ddp_rows_compare_two_processes_with_one():
    out = bench_gpu.bench_ddp(2, "cpu")
    assert "error" not in out, out
    assert out["differences"] == []
