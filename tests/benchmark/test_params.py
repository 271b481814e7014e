"""dglbench.params: the one type engine, its string rule, its ranges, and every config that goes through it."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from typing import Annotated, Literal

import pytest
from dglbench.attacks import create_attack
from dglbench.cli import load_config_file, main
from dglbench.defenses import create_defense
from dglbench.errors import ConfigError
from dglbench.params import (
    Count,
    ParamError,
    Probability,
    Range,
    Ratio,
    Tolerance,
    YamlDumper,
    YamlLoader,
    check_fields,
    coerce,
    parse_cli_value,
)
from dglbench.sweep.spec import load_spec
from dglbench.trial import TrialConfig

QUOTED = r"^defense_params.sigma: expected a number in \[0, 1e6\], got str '0.01'; write 0.01 without quotes$"
TINY = {"dataset_params": {"num_victims": 1, "image_size": 8}, "attack": None, "lpips": False, "victims_per_step": 1}


# ------------------------------------------------------------------------------------------- the string rule
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.01", 0.01),
        ("1e-3", 0.001),  # a YAML 1.2 number (PyYAML's safe loader would keep the string)
        ("1E5", 100000.0),
        ("-2", -2),
        ("true", True),
        ("null", None),
        ("[0.1, 1e-2]", [0.1, 0.01]),
        ("gaussian", "gaussian"),
        ("inf", "inf"),  # not a YAML number: the typed check then refuses it, naming the key
        (".inf", math.inf),
        ("", ""),
    ],
)
def test_command_line_text_is_parsed_once_as_a_yaml_scalar(text, value):
    assert parse_cli_value(text) == value
    assert type(parse_cli_value(text)) is type(value)


def test_config_files_read_yaml_1_2_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cg_tol: 1e-4\nlower_bound_tol: 1.0e-3\nquoted: '1e-4'\n")
    assert load_config_file(str(path)) == {"cg_tol": 1e-4, "lower_bound_tol": 1e-3, "quoted": "1e-4"}
    import yaml

    assert yaml.load("x: 1e-4", Loader=YamlLoader) == {"x": 1e-4}
    assert yaml.safe_load("x: 1e-4") == {"x": "1e-4"}  # PyYAML's own loader is left as it is
    data = {"number": 1e-4, "text": "1e-4", "other": "0.5", "name": "gaussian"}
    assert yaml.load(yaml.dump(data, Dumper=YamlDumper), Loader=YamlLoader) == data  # files written read back equal


@pytest.mark.parametrize(("value", "hint"), [("0.01", float), ("3", int), ("true", bool), ("1e-4", Tolerance)])
def test_a_string_is_never_a_number_or_a_bool(value, hint):
    with pytest.raises(ParamError) as info:
        coerce(value, hint, "key")
    message = str(info.value)
    assert message.startswith("key: expected ") and repr(value) in message and "without quotes" in message


def test_numbers_bools_and_ints():
    assert coerce(1, float, "x") == 1.0 and isinstance(coerce(1, float, "x"), float)  # int -> float
    for bad, hint in ((True, int), (False, float), (1.0, int), (2.5, int), (1, bool), (0, bool)):
        with pytest.raises(ConfigError, match="^x: expected"):
            coerce(bad, hint, "x")
    with pytest.raises(ConfigError, match="write 3, without a decimal point"):
        coerce(3.0, int, "x")
    assert coerce(3, int, "x") == 3 and coerce(False, bool, "x") is False


def test_nan_and_infinities_are_refused_unless_the_parameter_opts_in():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match="^x: expected a finite number, got"):
            coerce(value, float, "x")
    unbounded = Annotated[float, Range(ge=0, allow_inf=True)]
    assert coerce(math.inf, unbounded, "x") == math.inf
    with pytest.raises(ConfigError, match=r"expected a number >= 0, got -inf"):
        coerce(-math.inf, unbounded, "x")
    with pytest.raises(ConfigError, match="finite"):
        coerce(math.nan, unbounded, "x")  # NaN never

    @dataclass(frozen=True)
    class Budget:
        seconds: Annotated[float, Range(gt=0, allow_inf=True)] = math.inf
        tol: Tolerance = 1e-3

        def __post_init__(self):
            check_fields(self, "budget")

    assert Budget().seconds == math.inf and Budget(seconds=2).seconds == 2.0
    with pytest.raises(ConfigError, match="^budget parameter 'tol': expected a finite number > 0, got inf"):
        Budget(tol=math.inf)


@pytest.mark.parametrize(
    ("hint", "good", "bad", "expected"),
    [
        (Probability, (0, 0.5, 1), (-0.1, 1.01), "a number in [0, 1]"),
        (Ratio, (0, 0.99), (1, 1.5, -0.1), "a number in [0, 1)"),
        (Tolerance, (1e-12, 3), (0, -1), "a number > 0"),
        (Count, (1, 300), (0, -3), "an integer >= 1"),
    ],
)
def test_ranges_declared_next_to_the_parameter(hint, good, bad, expected):
    for value in good:
        assert coerce(value, hint, "p") == value
    for value in bad:
        with pytest.raises(ConfigError) as info:
            coerce(value, hint, "p")
        assert str(info.value).startswith(f"p: expected {expected}, got {value!r}"), str(info.value)


def test_containers_literals_and_unions_name_the_inner_key():
    assert coerce([1, 0.5], tuple[float, ...], "eps") == (1.0, 0.5)
    with pytest.raises(ConfigError, match=r"^eps\[1\]: expected a number, got str 'a'"):
        coerce([0.1, "a"], tuple[float, ...], "eps")
    with pytest.raises(ConfigError, match=r"^p\.b: expected an integer"):
        coerce({"a": 1, "b": "2"}, dict[str, int], "p")
    with pytest.raises(ConfigError, match="^mode: expected one of 'top', 'bottom', got str 'middle'"):
        coerce("middle", Literal["top", "bottom"], "mode")
    assert coerce(None, Count | None, "k") is None
    with pytest.raises(ConfigError, match="^k: expected an integer >= 1, got 0"):
        coerce(0, Count | None, "k")


# ------------------------------------------------------------------------------ the measured failures, fixed
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cg_max_iter": 0}, "cg_max_iter: expected an integer >= 1, got 0; give an integer like 300"),
        ({"lower_bound_tol": -1}, "lower_bound_tol: expected a number > 0, got -1.0; give a number like 0.001"),
        ({"cg_tol": 0}, "cg_tol: expected a number > 0, got 0.0"),
        ({"victims_per_step": 0}, "victims_per_step: expected an integer >= 1, got 0"),
        ({"eps": [0.1, -1]}, "eps[1]: expected a number >= 0, got -1.0"),
        ({"eps": math.nan}, "eps[0]: expected a finite number >= 0, got nan"),
        ({"seed": True}, "seed: expected an integer, got True"),
        ({"cg_max_iter": "300"}, "cg_max_iter: expected an integer >= 1, got str '300'; write 300 without quotes"),
    ],
)
def test_trial_settings_are_checked_when_the_config_is_read(change, message):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict({**TINY, **change})
    assert str(info.value) == message or str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("sigma", "message"),
    [
        (math.inf, "defense_params.sigma: expected a finite number, got inf"),
        ("inf", "defense_params.sigma: expected a number in [0, 1e6], got str 'inf'; give a number like 0.01"),
        (1e308, "defense_params.sigma: expected a number in [0, 1e6], got 1e+308; give a number like 0.01 (noise"),
        (-0.5, "defense_params.sigma: expected a number in [0, 1e6], got -0.5; give a number like 0.01"),
        ("0.01", "defense_params.sigma: expected a number in [0, 1e6], got str '0.01'; write 0.01 without quotes"),
    ],
)
def test_defense_parameters_fail_before_work_starts_naming_the_config_key(sigma, message):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict({**TINY, "defense": "gaussian", "defense_params": {"sigma": sigma}}).validate()
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_defense_and_attack_objects_check_their_own_fields():
    with pytest.raises(ConfigError, match="^defense 'gaussian' parameter 'sigma': expected a finite number in"):
        create_defense("gaussian", sigma=math.inf)
    with pytest.raises(ConfigError, match="^defense 'laplace' parameter 'scale': expected a number in"):
        create_defense("laplace", scale=1e308)
    with pytest.raises(ConfigError, match="^defense 'quantization' parameter 'bits': expected an integer, got True"):
        create_defense("quantization", bits=True)
    with pytest.raises(ConfigError, match="^attack 'InvertingGradients' parameter 'lr': expected a finite number"):
        create_attack("inverting_gradients", lr=math.inf)
    with pytest.raises(ConfigError, match="^attack_params.max_iterations: expected an integer, got str '5'"):
        TrialConfig.from_dict({**TINY, "attack": "dlg", "attack_params": {"max_iterations": "5"}}).validate()


def test_a_quoted_number_in_a_file_is_refused_and_the_command_line_gives_the_file_trial(tmp_path):
    quoted, plain = tmp_path / "quoted.yaml", tmp_path / "plain.yaml"
    quoted.write_text("defense: gaussian\ndefense_params: {sigma: '0.01'}\nattack: null\n")
    plain.write_text("defense: gaussian\ndefense_params: {sigma: 0.01}\nattack: null\n")
    with pytest.raises(
        ConfigError,
        match=QUOTED,
    ):
        TrialConfig.from_dict(load_config_file(str(quoted))).validate()
    from_file = TrialConfig.from_dict(load_config_file(str(plain)))
    from dglbench.cli import _overrides

    for text in ("0.01", "1e-2", "1.0e-2"):
        base = TrialConfig.from_dict({"defense": "gaussian", "attack": None})
        from_cli = base.with_overrides(_overrides([f"--defense_params.sigma={text}"]))
        assert from_cli.defense_params == {"sigma": 0.01}
        assert from_cli.trial_id == from_file.trial_id


def test_swept_values_are_typed_like_a_config_file():
    spec = {"method": "grid", "parameters": {"defense": {"value": "gaussian"}, "attack": {"value": None}}}
    good = {**spec, "parameters": {**spec["parameters"], "defense_params.sigma": {"values": [0.01, 1]}}}
    assert [t.defense_params["sigma"] for t in load_spec(good).trials()] == [0.01, 1]
    bad = {**spec, "parameters": {**spec["parameters"], "defense_params.sigma": {"values": [0.01, "0.01"]}}}
    with pytest.raises(
        ConfigError,
        match=QUOTED,
    ):
        load_spec(bad)
    with pytest.raises(ConfigError, match="cg_max_iter: expected an integer >= 1, got 0"):
        load_spec({**spec, "parameters": {**spec["parameters"], "cg_max_iter": {"values": [10, 0]}}})
    with pytest.raises(ConfigError, match="run_cap: expected an integer >= 1, got 0"):
        load_spec({**spec, "method": "random", "run_cap": 0})


# ------------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    ("config", "overrides", "key"),
    [
        ("cg_max_iter: 0\n", [], "cg_max_iter: expected an integer >= 1"),
        ("lower_bound_tol: -1\n", [], "lower_bound_tol: expected a number > 0"),
        ("defense: gaussian\ndefense_params: {sigma: '0.01'}\n", [], "defense_params.sigma: expected a number"),
        ("defense: gaussian\n", ["--defense_params.sigma=1e308"], "defense_params.sigma: expected a number in"),
    ],
)
def test_dglbench_run_with_a_bad_config_exits_2_with_one_line(tmp_path, capsys, config, overrides, key):
    path = tmp_path / "trial.yaml"
    path.write_text("dataset_params: {num_victims: 1, image_size: 8}\nattack: null\nlpips: false\n" + config)
    argv = ["run", "--config", str(path), "--out", str(tmp_path / "out"), "--quiet", "--logger", "none", *overrides]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dglbench: error: ") and key in err, err
    assert not (tmp_path / "out" / "records").exists()  # nothing ran


def test_the_installed_command_refuses_infinite_noise(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("dataset_params: {num_victims: 1, image_size: 8}\nattack: null\nlpips: false\ndefense: gaussian\n")
    cmd = [sys.executable, "-c", "import sys; from dglbench.cli import main; sys.exit(main())"]
    out = subprocess.run(
        [*cmd, "run", "--config", str(path), "--out", str(tmp_path / "out"), "--defense_params.sigma=inf"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "dglbench: error: defense_params.sigma: expected a number in [0, 1e6], got str 'inf'; give a number like 0.01"
    ]
