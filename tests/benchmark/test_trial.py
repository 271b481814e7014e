"""TrialConfig: strict parsing, stable ids, dotted overrides."""

import hashlib
import json

import dglbench
import pytest
from dglbench.errors import ConfigError, DglbenchError, UnknownNameError
from dglbench.trial import TrialConfig

EXAMPLE = {
    "dataset": "digits",
    "dataset_params": {"num_victims": 3, "image_size": 8, "seed": 1},
    "model": "convnet5",
    "defense": "gaussian",
    "defense_params": {"sigma": 0.01},
    "attack": "inverting_gradients",
    "attack_params": {"max_iterations": 50, "lr": 0.1},
    "eps": [0.1, 0.01],
    "case": {"labels": "inferred"},
    "lpips": False,
}


def test_from_dict_rejects_unknown_keys_naming_the_key():
    with pytest.raises(ConfigError, match="'sigmaa'"):
        TrialConfig.from_dict({**EXAMPLE, "sigmaa": 0.1})
    with pytest.raises(ConfigError, match="'nope'"):
        TrialConfig.from_dict({"case": {"nope": 1}})


@pytest.mark.parametrize(
    "key, value",
    [
        ("dataset", 3),
        ("dataset_params", [1, 2]),
        ("init_seed", "0"),
        ("init_seed", 1.5),
        ("init_seed", True),
        ("estimate", "yes"),
        ("lpips", 1),
        ("cg_tol", "small"),
        ("cg_tol", True),
        ("cg_max_iter", 3.0),
        ("eps", "0.1"),
        ("eps", [0.1, "a"]),
        ("eps", -0.1),
        ("eps", True),
        ("attack", 5),
        ("dtype", "float16"),
        ("case", "given"),
        ("case", {"labels": "guessed"}),
    ],
)
def test_wrong_types_and_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key if key != "case" else "case"):
        TrialConfig.from_dict({key: value})


def test_a_trial_that_measures_nothing_is_refused():
    with pytest.raises(ConfigError, match="measures nothing"):
        TrialConfig(attack=None, estimate=False)


def test_numbers_are_normalized():
    cfg = TrialConfig.from_dict({"cg_tol": 1, "eps": 0})
    assert cfg.cg_tol == 1.0 and isinstance(cfg.cg_tol, float)
    assert cfg.eps == (0.0,)
    assert TrialConfig.from_dict({"eps": [1, 0.5]}).eps == (1.0, 0.5)


def test_trial_id_is_stable_across_round_trips_and_key_order():
    cfg = TrialConfig.from_dict(EXAMPLE)
    via_json = TrialConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    reordered = TrialConfig.from_dict(
        {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(list(EXAMPLE.items()))}
    )
    assert cfg == via_json == reordered
    assert cfg.trial_id == via_json.trial_id == reordered.trial_id
    # the id is the first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys) of the config and version
    blob = json.dumps({"config": cfg.to_dict(), "version": dglbench.__version__}, sort_keys=True)
    assert cfg.trial_id == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert all(cfg.to_dict()[k] == (list(v) if k == "eps" else v) for k, v in EXAMPLE.items())
    # a fresh object from the same dict, and a to_dict -> from_dict -> to_dict fixed point
    assert TrialConfig.from_dict(EXAMPLE).trial_id == cfg.trial_id
    assert via_json.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "change",
    [
        {"defense_params": {"sigma": 0.02}},
        {"defense": "laplace", "defense_params": {"scale": 0.01}},
        {"dataset_params": {"num_victims": 4, "image_size": 8, "seed": 1}},
        {"seed": 1},
        {"eps": [0.1]},
        {"attack": None},
        {"case": {"labels": "given"}},
        {"model": "mlp_1x256"},
    ],
)
def test_trial_id_differs_for_different_configs(change):
    assert TrialConfig.from_dict({**EXAMPLE, **change}).trial_id != TrialConfig.from_dict(EXAMPLE).trial_id


def test_changing_any_one_setting_changes_the_id():
    base = TrialConfig.from_dict(EXAMPLE)
    changes = {
        "init": "xavier_uniform", "init_seed": 1, "estimate": False, "lower_bound_tol": 1e-2, "cg_tol": 1e-3,
        "cg_max_iter": 301, "seed": 1, "victims_per_step": 3, "lpips": True, "dtype": "float64",
        "model_params": {"drop_rate": 0.0}, "attack_params": {"max_iterations": 51, "lr": 0.1},
    }  # fmt: skip
    ids = {base.trial_id}
    for key, value in changes.items():
        ids.add(TrialConfig.from_dict({**EXAMPLE, key: value}).trial_id)
    assert len(ids) == len(changes) + 1  # every change gives its own id


def test_quoted_numbers_never_make_a_second_trial():
    with pytest.raises(ConfigError, match="^cg_tol: expected a number > 0, got str '1e-3'; write 1e-3 without quotes$"):
        TrialConfig.from_dict({**EXAMPLE, "cg_tol": "1e-3"})
    with pytest.raises(ConfigError, match="^defense_params.sigma: expected a number in"):
        TrialConfig.from_dict({**EXAMPLE, "defense_params": {"sigma": "0.01"}}).validate()


def test_with_overrides_dotted_keys():
    cfg = TrialConfig.from_dict(EXAMPLE)
    new = cfg.with_overrides(
        {"defense_params.sigma": 0.5, "dataset_params.num_victims": 2, "case.labels": "given", "seed": 7}
    )
    assert new.defense_params == {"sigma": 0.5}
    assert new.dataset_params == {"num_victims": 2, "image_size": 8, "seed": 1}  # siblings kept
    assert new.case == {"labels": "given"} and new.seed == 7
    assert cfg.defense_params == {"sigma": 0.01}  # the original is unchanged (frozen, deep-copied)
    # a nested key that did not exist yet is created
    assert cfg.with_overrides({"model_params.drop_rate": 0.0}).model_params == {"drop_rate": 0.0}
    # overriding back gives the same trial id
    assert (
        new.with_overrides({"defense_params.sigma": 0.01, "dataset_params.num_victims": 3})
        .with_overrides({"case.labels": "inferred", "seed": 0})
        .trial_id
        == cfg.trial_id
    )


def test_with_overrides_errors_name_the_key():
    cfg = TrialConfig()
    with pytest.raises(ConfigError, match="'nokey'"):
        cfg.with_overrides({"nokey.x": 1})
    with pytest.raises(ConfigError, match="'seed'"):
        cfg.with_overrides({"seed.x": 1})
    with pytest.raises(ConfigError, match="seed"):
        cfg.with_overrides({"seed": "zero"})
    with pytest.raises(ConfigError, match="'bogus'"):
        cfg.with_overrides({"case.bogus": 1})


def test_validate_resolves_every_name():
    TrialConfig.from_dict(EXAMPLE).validate()
    for change, match in (
        ({"defense": "nope"}, "unknown defense 'nope'"),
        ({"attack": "nope"}, "unknown attack 'nope'"),
        ({"model": "no_such_net"}, "unknown model"),
        ({"dataset": "no_such_data"}, "no_such_data"),
        ({"init": "no_such_init"}, "no_such_init"),
        ({"defense_params": {"sigma": "abc"}}, "sigma"),
        ({"attack_params": {"max_iterations": "many"}}, "max_iterations"),
        ({"dataset_params": {"num_victims": 0}}, "num_victims"),
    ):
        with pytest.raises(DglbenchError, match=match):
            TrialConfig.from_dict({**EXAMPLE, **change}).validate()
    with pytest.raises(UnknownNameError):
        TrialConfig(defense="nope").validate()
