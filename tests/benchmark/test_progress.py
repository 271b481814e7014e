"""Plain-text progress lines: hand-worked against a fake clock, and printed by a real trial."""

import io

from dglbench.progress import Pace, duration
from dglbench.runner import run_trial
from dglbench.trial import TrialConfig


def test_pace_throttles_and_estimates_from_the_last_steps():
    # steps end at 1, 2 (resumed: fast), then 62, 122, 182 s; every 30 s; the window holds the last 2 steps
    clock = iter([0.0, 1.0, 2.0, 62.0, 122.0, 182.0]).__next__
    out = io.StringIO()
    pace = Pace("job", total=5, every=30.0, window=2, stream=out, clock=clock)
    lines = [pace.step() for _ in range(5)]
    assert lines[:2] == [None, None]  # under 30 s since the start: nothing printed
    # after step 3: the window holds 1 s and 60 s; 1 s is under 5 % of 60 s (a resumed step) and is left out:
    # 2 steps left × 60 s
    assert lines[2] == "job: 3/5 steps, 62 s, about 2 min left"
    # after step 4: 1 step left × mean(60, 60) = 60 s
    assert lines[3] == "job: 4/5 steps, 2 min, about 60 s left"
    assert lines[4] == "job: 5/5 steps, 3 min"  # the last step always prints, without a time left
    assert out.getvalue().splitlines() == lines[2:]


def test_duration_units():
    got = [duration(s) for s in (0.4, 89, 90, 5399, 5400, 9000)]
    assert got == ["0 s", "89 s", "2 min", "90 min", "1.5 h", "2.5 h"]


def test_a_trial_logs_its_victim_steps(tmp_path, capsys):
    config = TrialConfig().with_overrides(
        {"attack": None, "dataset_params.num_victims": 4, "victims_per_step": 2, "lpips": False}
    )
    run_trial(config, output_dir=tmp_path, progress=False, log_progress=True)
    err = capsys.readouterr().err
    assert f"trial {config.trial_id}: 2/2 victim steps" in err
    run_trial(config, output_dir=tmp_path / "quiet", progress=False)  # off by default
    assert "victim steps" not in capsys.readouterr().err
