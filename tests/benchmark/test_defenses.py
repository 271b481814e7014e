"""Defenses: reproducibility, each family against an independent computation, the registry, plug-ins."""

from __future__ import annotations

import importlib.metadata
import json
import math
import textwrap

import pytest
import torch
from dglbench.case import Case, DefenseContext
from dglbench.defenses import (
    DEFENSES,
    DPSGD,
    EigenNoise,
    GaussianNoise,
    GradientPruning,
    LaplaceNoise,
    Quantization,
    Soteria,
    TopK,
    apply_defense,
    clean_gradients,
    create_defense,
    list_defenses,
    per_example_gradients,
    run_defense,
)
from dglbench.defenses.soteria import soteria_scores
from dglbench.errors import ConfigError, DglbenchError, ShapeError, UnknownNameError
from dglbench.influence import i2f, top_eigenpairs
from torch import nn

torch.set_num_threads(1)  # the test machines are small and shared: more threads only contend


def small_model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(32, 6), nn.Sigmoid(), nn.Linear(6, 3)
    )
    return model.to(dtype).eval()


def make_context(batch: int = 3, dtype=torch.float32, seed: int = 0, case: Case | None = None) -> DefenseContext:
    gen = torch.Generator().manual_seed(123)
    images = torch.randn(batch, 1, 4, 4, generator=gen, dtype=dtype)
    labels = torch.randint(0, 3, (batch,), generator=gen)
    return DefenseContext(
        small_model(dtype), images, labels, case=case or Case(), generator=torch.Generator().manual_seed(seed)
    )


def fake_gradients(shapes, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


STOCHASTIC = [
    ("gaussian", {"sigma": 0.1}),
    ("laplace", {"scale": 0.1}),
    ("dp_sgd", {"clip": 0.1, "sigma": 1.0}),
    ("quantization", {"bits": 2, "rounding": "stochastic"}),
    ("eigen_noise", {"scale": 0.1, "ranks": "top", "n": 2}),
]


def test_registered_names():
    expected = {"none", "gaussian", "laplace", "dp_sgd", "pruning", "topk", "quantization", "soteria", "eigen_noise"}
    assert set(DEFENSES.list()) == expected


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_runs_and_describes_as_json(name):
    defense = create_defense(name)
    out = run_defense(defense, make_context())
    assert out.defended.shape == out.clean.shape and torch.isfinite(out.defended).all()
    record = json.loads(json.dumps(defense.describe()))
    assert record["name"] == name and set(record) == {"name", "params", "privacy"}


@pytest.mark.parametrize(("name", "params"), STOCHASTIC)
def test_same_seed_same_output_other_seed_other_output(name, params):
    defense = create_defense(name, **params)
    first = run_defense(defense, make_context(seed=7)).defended
    again = run_defense(defense, make_context(seed=7)).defended
    other = run_defense(defense, make_context(seed=8)).defended
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_gaussian_noise_has_std_sigma():
    context = make_context()
    noisy = GaussianNoise(sigma=0.3)([torch.zeros(100, 100), torch.zeros(10)], context)
    assert abs(noisy[0].std().item() - 0.3) < 0.3 * 0.05
    assert abs(noisy[0].mean().item()) < 0.3 * 0.05


def test_laplace_noise_has_scale_b():
    context = make_context()
    (noise,) = LaplaceNoise(scale=0.2)([torch.zeros(200, 100)], context)
    assert abs(noise.abs().mean().item() - 0.2) < 0.2 * 0.05  # E|Z| = b
    assert abs(noise.std().item() - 0.2 * math.sqrt(2)) < 0.2 * math.sqrt(2) * 0.05


def test_pruning_zeros_exactly_the_smallest_entries_globally():
    grads = fake_gradients([(5, 7), (7,), (3, 3)])
    grads[1] = grads[1] * 1e-3  # a layer of tiny gradients: pruned entirely by the global rule
    out = GradientPruning(ratio=0.4)(grads, make_context())
    flat_in, flat_out = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in out])
    pruned = flat_out == 0
    assert int(pruned.sum()) == math.floor(0.4 * flat_in.numel())
    assert flat_in[~pruned].abs().min() >= flat_in[pruned].abs().max()
    assert torch.equal(flat_out[~pruned], flat_in[~pruned])
    assert bool((out[1] == 0).all())


def test_topk_keeps_the_largest_entries_in_every_layer():
    grads = fake_gradients([(5, 7), (7,), (3, 3)])
    grads[1] = grads[1] * 1e-3
    out = TopK(ratio=0.3)(grads, make_context())
    for g, h in zip(grads, out):
        kept = h != 0
        assert int(kept.sum()) == math.ceil(0.3 * g.numel() - 1e-9)
        assert g[kept].abs().min() >= g[~kept].abs().max()
        assert torch.equal(h[kept], g[kept])


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_uniform_quantization_levels_and_error(bits):
    grads = fake_gradients([(40, 30), (50,)])
    out = Quantization(bits=bits)(grads, make_context())
    for g, q in zip(grads, out):
        step = (g.max() - g.min()) / (2**bits - 1)
        assert q.unique().numel() <= 2**bits
        assert (q - g).abs().max() <= step / 2 + 1e-6


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    (g,) = fake_gradients([(20,)])
    step = (g.max() - g.min()) / 3
    context, defense = make_context(), Quantization(bits=2, rounding="stochastic")
    draws = []
    for seed in range(400):
        context.generator = torch.Generator().manual_seed(seed)
        draws.append(defense([g], context)[0])
    draws = torch.stack(draws)
    assert (draws - g).abs().max() < step + 1e-6
    assert (draws.unique().numel()) <= 4
    assert (draws.mean(0) - g).abs().max() < 0.15 * step  # std of the mean <= step / (2·20)


@pytest.mark.parametrize("params", [{"bits": 1}, {"mode": "sign"}])
def test_sign_compression(params):
    grads = fake_gradients([(6, 4), (4,)])
    grads[0][0, 0] = 0.0
    out = Quantization(**params)(grads, make_context())
    for g, q in zip(grads, out):
        assert torch.allclose(q, torch.sign(g) * g.abs().mean())
    assert out[0][0, 0] == 0


# ------------------------------------------------------------------------------------------------- DP-SGD
def loop_per_example(context: DefenseContext) -> list[list[torch.Tensor]]:
    """Per-example gradients by a plain python loop with autograd, independent of torch.func."""
    params = [p for p in context.model.parameters() if p.requires_grad]
    out = []
    for x, y in zip(context.images, context.labels):
        loss = nn.functional.cross_entropy(context.model(x[None]), y[None])
        out.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return out


def test_per_example_gradients_match_a_python_loop():
    context = make_context(batch=4, dtype=torch.float64)
    vectorized = per_example_gradients(context)
    for i, grads in enumerate(loop_per_example(context)):
        for v, g in zip(vectorized, grads):
            torch.testing.assert_close(v[i], g)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dp_sgd_without_noise_averages_the_clipped_per_example_gradients(reduction):
    context = make_context(batch=4, dtype=torch.float64, case=Case(reduction=reduction))
    clip = 1.2
    loop = loop_per_example(context)
    norms = [torch.sqrt(sum((g**2).sum() for g in grads)) for grads in loop]
    assert max(norms) > clip > min(norms)  # some examples are clipped, some are not
    clipped = [[g * min(1.0, clip / (float(n) + 1e-6)) for g in grads] for grads, n in zip(loop, norms)]
    for grads in clipped:
        assert torch.sqrt(sum((g**2).sum() for g in grads)) <= clip
    expected = [sum(gs) / (4 if reduction == "mean" else 1) for gs in zip(*clipped)]
    out = apply_defense(DPSGD(clip=clip, sigma=0.0), clean_gradients(context), context)
    for e, o in zip(expected, out):
        torch.testing.assert_close(o, e)


def test_dp_sgd_noise_std_is_sigma_clip_over_batch():
    context = make_context(batch=4, dtype=torch.float64)
    defense = DPSGD(clip=0.05, sigma=2.0)
    base = torch.cat([g.flatten() for g in DPSGD(clip=0.05, sigma=0.0)(clean_gradients(context), context)])
    residuals = []
    for seed in range(30):
        context.generator = torch.Generator().manual_seed(seed)
        residuals.append(torch.cat([g.flatten() for g in defense(clean_gradients(context), context)]) - base)
    std = torch.cat(residuals).std().item()
    assert abs(std - 2.0 * 0.05 / 4) < 0.1 * 2.0 * 0.05 / 4


def test_dp_sgd_epsilon_decreases_with_sigma():
    epsilons = [DPSGD(sigma=s, steps=100, sample_rate=0.01).privacy()["epsilon"] for s in (0.7, 1.0, 2.0, 4.0)]
    assert all(a > b > 0 for a, b in zip(epsilons, epsilons[1:]))
    assert DPSGD(sigma=0.0).privacy() is None


def test_dp_sgd_epsilon_without_subsampling_matches_the_closed_form_and_the_command_hides_the_warning():
    """Sample rate 1: T steps of the Gaussian mechanism have RDP T·α/(2σ²), and the conversion (Balle et al. 2020)
    gives ε = min_α RDP(α) − (log δ + log α)/(α − 1) + log((α − 1)/α). At σ = 0.1 the minimum is the smallest
    order of the grid, where Opacus warns; the bound stays valid (conservative), so the command silences it."""
    import math
    import warnings

    from dglbench.cli import quiet_dependency_warnings
    from dglbench.defenses.dp_sgd import RDP_ORDERS

    sigma, steps, delta = 0.1, 200, 1e-5
    expected = min(steps * a / (2 * sigma**2) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
                   for a in RDP_ORDERS)  # fmt: skip
    defense = DPSGD(sigma=sigma, steps=steps, sample_rate=1.0, delta=delta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="Optimal order is the smallest alpha"):
            defense.privacy()  # the library call warns, as Opacus does
        quiet_dependency_warnings()  # what the dglbench command installs
        out = defense.privacy()
    assert out is not None and out["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert out["rdp_order"] == min(RDP_ORDERS)


# ------------------------------------------------------------------------------------------------ Soteria
def test_soteria_zeroes_the_expected_columns_of_the_last_layer_only():
    context = make_context(batch=2)
    clean = clean_gradients(context)
    out = apply_defense(Soteria(ratio=0.5), clean, context)
    names = context.parameter_names
    last = names.index("5.weight")
    zero_columns = (out[last] == 0).all(0)
    assert int(zero_columns.sum()) == 3
    torch.testing.assert_close(out[last][:, ~zero_columns], clean[last][:, ~zero_columns])
    for i, (c, o) in enumerate(zip(clean, out)):
        if i != last:
            assert torch.equal(c, o)


def test_soteria_prunes_the_features_with_largest_representation_to_jacobian_ratio():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Linear(8, 3)).double().eval()  # r = W1 x + b1
    images = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    context = DefenseContext(model, images, torch.tensor([0, 2]))
    w1 = model[1].weight.detach()
    r = images.flatten(1) @ w1.T + model[1].bias.detach()
    scores = (w1.norm(dim=1)[None, :] / r.abs()).sum(0)  # Σ_b ‖∂r_f/∂x_b‖ / |r_bf| with ∂r_f/∂x = W1[f]
    torch.testing.assert_close(soteria_scores(model, images, "2"), scores)
    out = Soteria(ratio=0.25)(clean_gradients(context), context)
    zeroed = set(torch.nonzero((out[2] == 0).all(0)).flatten().tolist())
    assert zeroed == set(torch.argsort(scores)[:2].tolist())


def test_soteria_scores_match_a_feature_by_feature_jacobian():
    context = make_context(batch=2, dtype=torch.float64)
    model, images = context.model, context.images
    expected = torch.zeros(6, dtype=torch.float64)
    features = model[:5]
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda x: features(x[None])[0], images[b])  # [6, 1, 4, 4]
        r = features(images[b][None])[0]
        expected += jac.flatten(1).norm(dim=1) / r.abs()
    torch.testing.assert_close(soteria_scores(model, images, "5", chunk=4), expected.detach())


# -------------------------------------------------------------------------------------------- eigen noise
@pytest.mark.parametrize("rank", [0, 1])
def test_eigen_noise_along_one_direction_has_i2f_c_over_sqrt_lambda(rank):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 6), nn.Sigmoid(), nn.Linear(6, 3)).double().eval()
    images, labels = torch.randn(1, 1, 3, 3, dtype=torch.float64), torch.tensor([1])
    context = DefenseContext(model, images, labels)
    scale = 0.05
    out = run_defense(EigenNoise(scale=scale, ranks=rank, sampling="deterministic"), context)
    lam = top_eigenpairs(model, images, labels, rank + 1).eigenvalues[0, rank]
    assert abs(out.perturbation.norm().item() - scale) < 1e-8
    value = i2f(model, images, labels, out.perturbation, eps=0.0, tol=1e-10).value[0]
    torch.testing.assert_close(value, scale / lam.sqrt(), rtol=1e-4, atol=0)


def test_eigen_noise_rank_selection():
    assert EigenNoise(ranks="top", n=3).selected_ranks() == [0, 1, 2]
    assert EigenNoise(ranks="bottom", n=2, k=5).selected_ranks() == [3, 4]
    assert EigenNoise(ranks="2:4").selected_ranks() == [2, 3] and EigenNoise(ranks="2:4").num_eigenpairs == 4
    assert EigenNoise(ranks=3).selected_ranks() == [3]
    with pytest.raises(ConfigError, match="'k'"):
        EigenNoise(ranks="bottom", n=2)
    with pytest.raises(ConfigError, match="outside"):
        EigenNoise(ranks="2:9", k=4)
    with pytest.raises(ConfigError, match="'ranks'"):
        EigenNoise(ranks="middle")


# ------------------------------------------------------------------------------------- output validation
def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_apply_defense_rejects_wrong_shapes_nan_and_dtype():
    context = make_context()
    clean = clean_gradients(context)
    names = context.parameter_names

    def wrong_shape(grads, ctx):
        return [g.flatten() if i == 2 else g for i, g in enumerate(grads)]

    with pytest.raises(ShapeError) as exc:
        apply_defense(wrong_shape, clean, context)
    assert "wrong_shape" in _one_line(exc) and repr(names[2]) in str(exc.value)
    with pytest.raises(ShapeError, match="returned 2 tensors"):
        apply_defense(lambda grads, ctx: grads[:2], clean, context)
    with pytest.raises(DglbenchError, match="NaN") as exc:
        apply_defense(lambda grads, ctx: [g * float("nan") for g in grads], clean, context)
    assert "<lambda>" in _one_line(exc)
    with pytest.raises(DglbenchError, match="float64"):
        apply_defense(lambda grads, ctx: [g.double() for g in grads], clean, context)


def test_apply_defense_does_not_let_a_defense_modify_the_clean_gradient():
    context = make_context()
    clean = clean_gradients(context)
    before = [g.clone() for g in clean]

    def in_place(grads, ctx):
        for g in grads:
            g.zero_()
        return grads

    apply_defense(in_place, clean, context)
    assert all(torch.equal(a, b) for a, b in zip(before, clean))


def test_pruning_perturbation_is_minus_the_pruned_entries():
    out = run_defense(GradientPruning(ratio=0.5), make_context())
    pruned = out.defended == 0
    torch.testing.assert_close(out.perturbation[pruned], -out.clean[pruned])
    assert bool((out.perturbation[~pruned] == 0).all())


# ------------------------------------------------------------------------------------------ registry errors
def test_unknown_name_lists_the_available_defenses_and_how_to_plug_in():
    with pytest.raises(UnknownNameError) as exc:
        create_defense("gausian")
    message = _one_line(exc)
    assert "'gaussian'" in message and "dp_sgd" in message and "module:Class" in message
    assert "dglbench.defenses" in message


def test_bad_parameter_names_types_and_ranges_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="'sigma'") as exc:
        create_defense("gaussian", sigma="abc")
    _one_line(exc)
    with pytest.raises(ConfigError, match="no parameter 'sigmaa'.*did you mean 'sigma'"):
        create_defense("gaussian", sigmaa=0.1)
    with pytest.raises(ConfigError, match="'bits'"):
        create_defense("quantization", bits=2.5)
    with pytest.raises(ConfigError, match="'rounding'"):
        create_defense("quantization", rounding="up")
    with pytest.raises(ConfigError, match="'ratio'.*in \\[0, 1\\]"):
        create_defense("pruning", ratio=1.5)
    with pytest.raises(ConfigError, match="'steps': expected an integer >= 1, got str '10'; write 10 without quotes"):
        create_defense("dp_sgd", steps="10")  # a string is not a number: command lines parse their text first
    assert create_defense("dp_sgd", steps=10, sigma=1).params == {**create_defense("dp_sgd").params, "steps": 10}
    assert isinstance(create_defense("dp_sgd", sigma=1).params["sigma"], float)  # an int passes as a float


PLUGIN = """
from dataclasses import dataclass

from dglbench.defenses import Defense


@dataclass(frozen=True)
class Scale(Defense):
    factor: float = 2.0

    def __call__(self, gradients, context):
        return [self.factor * g for g in gradients]


class Untyped:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, gradients, context):
        return [self.factor * g for g in gradients]
"""


@pytest.fixture()
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "dglbench_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "dglbench_test_plugin"


def test_module_colon_class_loading(plugin_module):
    defense = create_defense(f"{plugin_module}:Scale", factor=3)
    assert defense.factor == 3.0
    assert defense.describe() == {"name": f"{plugin_module}:Scale", "params": {"factor": 3.0}, "privacy": None}
    context = make_context()
    clean = clean_gradients(context)
    out = apply_defense(defense, clean, context)
    assert all(torch.equal(o, 3 * c) for o, c in zip(out, clean))
    with pytest.raises(ConfigError, match="'factor'"):
        create_defense(f"{plugin_module}:Scale", factor="x")
    assert create_defense(f"{plugin_module}:Untyped", factor=0.5).factor == 0.5
    with pytest.raises(UnknownNameError, match="has no 'Missing'"):
        create_defense(f"{plugin_module}:Missing")
    with pytest.raises(UnknownNameError, match="cannot import module"):
        create_defense("no_such_module_dglbench:Thing")


def test_entry_point_loading(plugin_module, monkeypatch):
    entry = importlib.metadata.EntryPoint(name="scale_by", value=f"{plugin_module}:Scale", group="dglbench.defenses")

    def fake_entry_points(**kwargs):
        return importlib.metadata.EntryPoints([entry] if kwargs.get("group") == "dglbench.defenses" else [])

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    defense = create_defense("scale_by", factor=0.5)
    assert type(defense).__name__ == "Scale" and defense.factor == 0.5
    assert "scale_by" in list_defenses()
    with pytest.raises(UnknownNameError, match="scale_by"):
        create_defense("scale_byy")


def test_readme_example_defense_runs(tmp_path, monkeypatch):
    from pathlib import Path

    import dglbench.defenses

    readme = (Path(dglbench.defenses.__file__).parent / "README.md").read_text()
    section = readme.split("## Writing your own defense", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dglbench_readme_example.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    defense = create_defense("dglbench_readme_example:ClipNoise", clip=0.5, sigma=0.01)
    context = make_context()
    out = apply_defense(defense, clean_gradients(context), context)
    assert len(out) == len(context.parameter_names)
    with pytest.raises(ConfigError, match="'clip'"):
        create_defense("dglbench_readme_example:ClipNoise", clip=-1.0)


@pytest.mark.parametrize("name", ["soteria", "dp_sgd", "eigen_noise"])
def test_defenses_that_differentiate_run_under_no_grad(name):
    context = make_context()
    with torch.no_grad():
        out = run_defense(create_defense(name), context)
    assert torch.isfinite(out.defended).all() and not torch.equal(out.defended, out.clean)
