"""Entry schema v1: strict parsing, the exported JSON Schema, identities, schema version, track loading."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from dglbench.errors import ConfigError, DataNotFoundError
from dglbench.leaderboard.schema import (
    SCHEMA_VERSION,
    Entry,
    config_hash,
    entry_json_schema,
    entry_slug,
    victims_json_schema,
)
from dglbench.leaderboard.stats import summarize
from dglbench.leaderboard.store import EntryFileError, check_schema_version, load_entry
from dglbench.leaderboard.track import load_track
from dglbench.leaderboard.typed import SchemaError, from_dict, to_dict

REPO = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------ a minimal, independent JSON Schema checker
def conforms(value, schema, defs) -> bool:
    """The JSON Schema keywords the exported schema uses, checked by hand (independent of dglbench)."""
    if "$ref" in schema:
        return conforms(value, defs[schema["$ref"].split("/")[-1]], defs)
    if "anyOf" in schema:
        return any(conforms(value, s, defs) for s in schema["anyOf"])
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    checks = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        None: True,
    }
    if not checks[kind]:
        return False
    if kind == "array":
        return all(conforms(v, schema["items"], defs) for v in value)
    if kind == "object":
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                if not conforms(v, props[k], defs):
                    return False
            elif extra is False or (isinstance(extra, dict) and not conforms(v, extra, defs)):
                return False
    return True


@pytest.fixture
def entry_dict(lb_root, synthetic_entry) -> dict:
    _, path, _ = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})
    return json.loads(path.read_text())


def test_exported_schema_files_are_in_sync_with_the_dataclasses():
    folder = REPO / "leaderboards" / "v2" / "schema"
    assert json.loads((folder / "entry.schema.json").read_text()) == entry_json_schema()
    assert json.loads((folder / "victims.schema.json").read_text()) == victims_json_schema()


def test_v1_entries_conform_to_the_v1_schema_as_published_and_not_to_v2():
    v1 = json.loads((REPO / "leaderboards" / "v1" / "schema" / "entry.schema.json").read_text())
    files = sorted((REPO / "leaderboards" / "v1" / "entries").glob("*/*[!s].json"))
    files = [f for f in files if not f.name.endswith(".victims.json")]
    assert files
    for f in files:
        data = json.loads(f.read_text())
        assert conforms(data, v1, v1["$defs"]), f
        assert not conforms(data, entry_json_schema(), entry_json_schema()["$defs"]), f  # v2 adds required fields


def test_exported_schema_accepts_an_entry_and_rejects_what_the_parser_rejects(entry_dict):
    schema = entry_json_schema()
    defs = schema["$defs"]
    assert conforms(entry_dict, schema, defs)
    mutations = {
        "unknown key": lambda d: d["defense"].update(homepage="x"),
        "missing key": lambda d: d["utility"]["fedsgd"].pop("test_accuracy"),
        "number as string": lambda d: d["privacy"][0]["metrics"]["psnr"].update(mean="30.1"),
        "bool as int": lambda d: d["privacy"][0].update(failures=True),
        "bad enum": lambda d: d["defense"].update(source="pypi"),
    }
    for name, mutate in mutations.items():
        bad = copy.deepcopy(entry_dict)
        mutate(bad)
        assert not conforms(bad, schema, defs), name
        with pytest.raises(SchemaError):
            from_dict(Entry, bad)


def test_every_field_is_always_present_and_the_entry_round_trips(entry_dict):
    entry = from_dict(Entry, entry_dict)
    assert to_dict(entry) == entry_dict
    schema = entry_json_schema()
    for name, body in schema["$defs"].items():
        assert sorted(body["required"]) == sorted(body["properties"]), name  # nothing optional: null instead
    no_i2f = dict(entry_dict, i2f=None)
    assert to_dict(from_dict(Entry, no_i2f))["i2f"] is None
    with pytest.raises(SchemaError, match="^i2f: missing"):
        from_dict(Entry, {k: v for k, v in entry_dict.items() if k != "i2f"})


def test_schema_errors_name_the_path_of_the_bad_value(entry_dict):
    bad = copy.deepcopy(entry_dict)
    bad["privacy"][1]["metrics"]["ssim"]["n"] = "8"
    with pytest.raises(SchemaError, match=r"^privacy\[1\]\.metrics\.ssim\.n: expected an integer, got str '8'"):
        from_dict(Entry, bad)
    bad = copy.deepcopy(entry_dict)
    bad["utility"]["fedsgd"]["lr"] = float("nan")
    with pytest.raises(SchemaError, match="finite"):
        from_dict(Entry, bad)
    bad = copy.deepcopy(entry_dict)
    bad["schema_version"] = 1  # the dataclass is schema v2; v1 data is read through the migration
    with pytest.raises(ConfigError, match="reads schema v2 entries only"):
        from_dict(Entry, bad)


def test_config_hash_identifies_track_defense_and_parameters():
    h = config_hash("digits-convnet5@1", "gaussian", {"sigma": 1, "x": [1, 2]})
    assert h == config_hash("digits-convnet5@1", "gaussian", {"x": [1.0, 2.0], "sigma": 1.0})
    assert h != config_hash("digits-convnet5@2", "gaussian", {"sigma": 1, "x": [1, 2]})
    assert h != config_hash("digits-convnet5@1", "laplace", {"sigma": 1, "x": [1, 2]})
    assert h != config_hash("digits-convnet5@1", "gaussian", {"sigma": 2, "x": [1, 2]})
    assert len(h) == 12 and entry_slug("pkg.mod:My Defense") == "pkg-mod-my-defense"


def test_summaries_match_numpy_and_scipy():
    import numpy as np
    from scipy import stats

    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    s = summarize([*xs, None, float("nan")])
    low, high = stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
    assert s.n == 6
    assert s.mean == pytest.approx(np.mean(xs), rel=1e-5) and s.median == pytest.approx(np.median(xs), rel=1e-5)
    assert s.std == pytest.approx(np.std(xs, ddof=1), rel=1e-5)
    assert (s.ci95_low, s.ci95_high) == (pytest.approx(low, rel=1e-5), pytest.approx(high, rel=1e-5))
    one = summarize([2.0])
    assert (one.n, one.mean, one.ci95_low) == (1, 2.0, None)


# ------------------------------------------------------------------------------------------- schema version
def test_schemas_v1_and_v2_are_read_and_a_newer_version_asks_for_a_newer_dglbench(entry_dict, tmp_path):
    assert SCHEMA_VERSION == 2
    check_schema_version(entry_dict)
    check_schema_version({"schema_version": 1})
    for bad, match in (({"schema_version": 3}, "newer than this dglbench knows"),
                       ({"schema_version": "1"}, "positive integer"), ({"schema_version": True}, "positive integer"),
                       ([1], "JSON object")):  # fmt: skip
        with pytest.raises(EntryFileError, match=match):
            check_schema_version(bad)
    path = tmp_path / "e.json"
    path.write_text(json.dumps(dict(entry_dict, schema_version=3)))
    with pytest.raises(EntryFileError, match=r"e\.json: schema_version 3 is newer"):
        load_entry(path)


# ----------------------------------------------------------------------------------------------- tracks
def _write_track(root: Path, data: dict, name: str = "digits-convnet5") -> Path:
    path = root / "v1" / "tracks" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_stored_tracks_load_and_content_hash_ignores_formatting(lb_root):
    track = load_track("digits-convnet5@1", lb_root)
    data = yaml.safe_load((lb_root / "v1" / "tracks" / "digits-convnet5.yaml").read_text())
    _write_track(lb_root, dict(reversed(list(data.items()))))  # other key order, no comments
    assert load_track("digits-convnet5", lb_root).content_hash == track.content_hash
    data["description"], data["title"] = "Reworded.", "Renamed"  # prose is not protocol
    _write_track(lb_root, data)
    assert load_track("digits-convnet5", lb_root).content_hash == track.content_hash
    data["seed"] = 1
    _write_track(lb_root, data)
    assert load_track("digits-convnet5", lb_root).content_hash != track.content_hash
    for ref in ("digits-convnet5", "mnist-convnet5", "cifar10-cifar_resnet18", "imagenet-resnet50"):
        assert load_track(f"{ref}@1").ref == f"{ref}@1" and load_track(f"{ref}@1").protocol == 1
    for ref in ("mnist-convnet5", "cifar10-cifar_resnet18", "imagenet-resnet50", "natural-convnet5", "faces-convnet5"):
        assert load_track(ref).ref == f"{ref}@2" and load_track(ref).protocol == 2  # the latest version
    assert load_track("digits-convnet5").ref == "digits-convnet5@1"  # no v2 counterpart


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour="red"), "colour: unknown key"),
        (lambda d: d["utility"].update(rounds="100"), "utility.rounds: expected an integer"),
        # a quoted number is a string ("1e-4" unquoted is a YAML 1.2 number, so the test quotes 0.0001)
        (lambda d: d["estimate"].update(cg_tol="0.0001"), "estimate.cg_tol: expected a number"),
        (lambda d: d.pop("ranking"), "ranking: missing"),
        (lambda d: d["ranking"].update(metric="lpips_vgg"), "ranking.metric 'lpips_vgg' is not a track metric"),
        (lambda d: d["ranking"].update(attack="fgsm"), "ranking.attack 'fgsm'"),
        (lambda d: d.update(metrics=["psnr", "sharpness"]), "unknown metric 'sharpness'"),
        (lambda d: d["attacks"][0].update(name="nope"), "unknown attack 'nope'"),
        (lambda d: d["data"].update(dataset="nope"), "unknown dataset 'nope'"),
        (lambda d: d["model"].update(name="nope_net"), "unknown model 'nope_net'"),
        (lambda d: d["data"]["params"].update(root="/data"), "location"),
        (lambda d: d.update(version=2), "does not match its folder v1"),
    ],
)
def test_bad_tracks_are_one_line_errors(lb_root, mutate, message):
    data = yaml.safe_load((lb_root / "v1" / "tracks" / "digits-convnet5.yaml").read_text())
    mutate(data)
    _write_track(lb_root, data)
    with pytest.raises(ConfigError) as info:
        load_track("digits-convnet5", lb_root)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_track_lists_the_stored_ones(lb_root):
    with pytest.raises(DataNotFoundError, match="digits-convnet5@1"):
        load_track("cifar11", lb_root)
