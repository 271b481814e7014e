"""Closed-form attacks and a malicious server, measured: analytic_linear, imprint, april (and gradinversion vs IG).

Each proof runs the attack on embedded data the way a trial does (the victim model from
:func:`dglbench.modules.build_victim_model`, the payload from :func:`dglbench.case.make_payload`, the metrics of
:func:`dglbench.metrics.reconstruction_metrics`, PSNR on de-normalized images clamped to [0, 1]):

- ``analytic_linear`` (Phong et al. 2017) on undefended embedded digits (1×8×8) through ``mlp_1x256``, one image per
  victim: median PSNR with a 95 % bootstrap interval; also under small Gaussian noise, where it is no longer exact.
- ``imprint`` (Fowl et al. 2022) under ``Case(server="malicious")``: 32-image batches of digits through the imprint
  block in front of ``mlp_1x256``; per victim the share of its images recovered above 40 dB, mean with a 95 %
  bootstrap interval over victims, against ``(1 − 1/k)^31``, the chance that an image has its bin to itself.
- ``april`` (Lu et al. 2022) on embedded natural photographs (3×32×32) through the zoo's ViT and DeiT (patch 4,
  64 patches, width 192), one image per victim, timm's own initialization.
- ``gradinversion`` (Yin et al. 2021) against Inverting Gradients on batches of 4 digits through a small BatchNorm
  net whose running statistics are the public split's (:func:`run_prior`, section ``attacks-prior``).

Run ``python -m dglbench.bench_attacks_more`` (prints) or ``python -m dglbench.bench --only attacks-more``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from dglbench.attacks import create_attack
from dglbench.case import Case, DefenseContext, make_payload
from dglbench.defenses import create_defense, run_defense
from dglbench.metrics import reconstruction_metrics
from dglbench.trial import TrialConfig
from torch import Tensor

__all__ = [
    "bn_digits_net",
    "bootstrap_interval",
    "measure_analytic",
    "measure_april",
    "measure_gradinversion",
    "measure_imprint",
    "run",
    "run_prior",
]

ANALYTIC_VICTIMS = 64
PSNR_CAP = 150.0  # an exact copy has infinite PSNR: capped so that medians and means stay numbers


def bootstrap_interval(
    values: Sequence[float], statistic: Callable[[np.ndarray], float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``statistic`` of ``values`` and its 95 % percentile-bootstrap interval (seeded).

    Example:
        >>> value, low, high = bootstrap_interval([1.0, 2.0, 3.0, 4.0], np.median)
        >>> value, low <= value <= high
        (2.5, True)
    """
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    stats = [statistic(data[rng.integers(0, len(data), len(data))]) for _ in range(resamples)]
    return float(statistic(data)), float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def _setup(
    dataset: str, model: str, case: dict[str, Any], data: dict[str, Any], init: str = "uniform", bins: int = 256
) -> Any:
    from dglbench.datamodules import create_datamodule
    from dglbench.modules import build_victim_model

    config = TrialConfig.from_dict(
        {"dataset": dataset, "dataset_params": data, "model": model, "case": case, "init": init, "estimate": False}
    )
    dm = create_datamodule(dataset, **data)
    dm.setup("predict")
    victim_model = build_victim_model(config, dm.num_classes, dm.image_shape)
    if config.case_obj.server == "malicious":
        from dglbench.attacks.imprint import imprint_victim_model

        victim_model = imprint_victim_model(victim_model, dm, bins)
    mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
    return config.case_obj, dm, victim_model, ((0 - mean) / std, (1 - mean) / std)


def _per_image_psnr(dm: Any, images: Tensor, truth: Tensor) -> list[float]:
    metrics = reconstruction_metrics(images, truth, denormalize=dm.denormalize, normalize=dm.normalize)
    return [PSNR_CAP if p is None or p > PSNR_CAP else float(p) for p in metrics.per_image["psnr"]]


def _attack_victims(
    name: str, case: Case, dm: Any, model: torch.nn.Module, box: Any, defense: tuple[str, dict[str, Any]] = ("none", {})
) -> tuple[list[list[float]], float]:
    attack = create_attack(name)
    defense_obj = create_defense(defense[0], **defense[1])
    out, start = [], time.perf_counter()
    for j in range(dm.num_victims):
        v = dm.victim(j)
        x, y = v["images"], v["labels"]
        gen = torch.Generator().manual_seed(j)
        shared = run_defense(defense_obj, DefenseContext(model, x, y, case, gen)).defended
        result = attack.run(model, make_payload(case, shared, y), tuple(x.shape[1:]), box=box)
        out.append(_per_image_psnr(dm, result.images, x) if result.status == "ok" else [math.nan] * len(x))
    return out, (time.perf_counter() - start) / dm.num_victims


def measure_analytic(num_victims: int = ANALYTIC_VICTIMS) -> list[dict[str, Any]]:
    """analytic_linear through mlp_1x256 on ``num_victims`` single digits, undefended and under Gaussian noise."""
    case, dm, model, box = _setup("digits", "mlp_1x256", {}, {"num_victims": num_victims})
    rows = []
    for defense in (("none", {}), ("gaussian", {"sigma": 1e-4}), ("gaussian", {"sigma": 1e-2})):
        psnr, seconds = _attack_victims("analytic_linear", case, dm, model, box, defense)
        flat = [p[0] for p in psnr]
        rows.append({"defense": defense, "psnr": bootstrap_interval(flat, np.median), "min": min(flat), "s": seconds})
    return rows


def measure_imprint(bins: Sequence[int] = (256, 512), num_victims: int = 11) -> list[dict[str, Any]]:
    """imprint on ``num_victims`` batches of 32 digits (the test split holds 359) for each number of bins."""
    rows = []
    for k in bins:
        case, dm, model, box = _setup(
            "digits",
            "mlp_1x256",
            {"server": "malicious"},
            {"num_victims": num_victims, "images_per_victim": 32},
            bins=k,
        )
        psnr, seconds = _attack_victims("imprint", case, dm, model, box)
        shares = [float(np.mean([p > 40 for p in victim])) for victim in psnr]
        rows.append({
            "bins": k, "share": bootstrap_interval(shares, np.mean), "min": min(shares), "expected": (1 - 1 / k) ** 31,
            "median_psnr": float(np.median([p for victim in psnr for p in victim])), "s": seconds,
        })  # fmt: skip
    return rows


def measure_april(models: Sequence[str] = ("vit_tiny_patch16_224", "deit_tiny_patch16_224"), num_victims: int = 16):
    """april through the zoo's ViTs (timm's init) on ``num_victims`` natural 32×32 photographs."""
    from dglbench.models.zoo import ZOO

    rows = []
    for name in models:
        entry = next(e for e in ZOO if e.name == name)
        case, dm, model, box = _setup("natural", name, {}, {"num_victims": num_victims}, init="default")
        assert dict(entry.kwargs).items() <= {"img_size": 32, "patch_size": 4}.items()
        psnr, seconds = _attack_victims("april", case, dm, model, box)
        flat = [p[0] for p in psnr]
        params = sum(p.numel() for p in model.parameters())
        rows.append({"model": name, "params": params, "psnr": bootstrap_interval(flat, np.median), "min": min(flat),
                     "s": seconds})  # fmt: skip
    return rows


def _db(value: tuple[float, float, float]) -> str:
    return f"{value[0]:.1f} [{value[1]:.1f}, {value[2]:.1f}]"


def run() -> str:
    """The BENCHMARKS.md section (a minute or two on one CPU thread)."""
    torch.set_num_threads(1)
    analytic, imprint, april = measure_analytic(), measure_imprint(), measure_april()
    worst_imprint = min(r["share"][0] for r in imprint if r["bins"] == 256)
    lines = [
        f"**Closed-form attacks recover undefended images essentially exactly.** `analytic_linear` rebuilds single "
        f"digits through `mlp_1x256` at a median {analytic[0]['psnr'][0]:.0f} dB (PSNR capped at {PSNR_CAP:.0f}; "
        f"the goal was ≥ 60 dB); `april` rebuilds photographs through timm ViTs at a median "
        f"{april[0]['psnr'][0]:.0f} dB; a malicious server's `imprint` block returns on average "
        f"{100 * worst_imprint:.0f} % of a 32-image batch above 40 dB with its default 256 bins (goal ≥ 80 %), "
        f"limited by images sharing a bin (and digits sharing a brightness). Medians and means carry 95 % "
        f"bootstrap intervals over victims.",
        "",
        f"`analytic_linear` (Phong et al. 2017): embedded digits 1×8×8, `mlp_1x256` (sigmoid, DLG's uniform init), "
        f"{ANALYTIC_VICTIMS} victims of one image, labels given, PSNR per victim.",
        "",
        "| defense | median PSNR (dB) [95 % CI] | min PSNR | s / victim |",
        "|---|---:|---:|---:|",
        *(
            f"| {' '.join([r['defense'][0], *(f'{k}={v}' for k, v in r['defense'][1].items())])} | {_db(r['psnr'])} "
            f"| {r['min']:.1f} | {r['s']:.3f} |"
            for r in analytic
        ),
        "",
        '`imprint` (Fowl et al. 2022), `Case(server="malicious")`: the imprint block (k bins of the mean brightness '
        "at quantiles of the other split's brightness, ReLU, added back to the image) in front of `mlp_1x256`; "
        "11 victims of 32 digits (352 of the test split's 359), undefended. *share* = images above 40 dB per victim.",
        "",
        "| bins k | mean share > 40 dB [95 % CI] | worst victim | (1 − 1/k)^31 | median PSNR (dB) | s / victim |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['bins']} | {100 * r['share'][0]:.1f} % [{100 * r['share'][1]:.1f}, {100 * r['share'][2]:.1f}] "
            f"| {100 * r['min']:.1f} % | {100 * r['expected']:.1f} % | {r['median_psnr']:.1f} | {r['s']:.3f} |"
            for r in imprint
        ),
        "",
        "`april` (Lu et al. 2022), closed form: embedded natural photographs 3×32×32, the zoo's ViTs (patch 4: 64 "
        "patches, width 192), timm's initialization, 16 victims of one image, labels given.",
        "",
        "| model | parameters | median PSNR (dB) [95 % CI] | min PSNR | s / victim |",
        "|---|---:|---:|---:|---:|",
        *(f"| {r['model']} | {r['params']:,} | {_db(r['psnr'])} | {r['min']:.1f} | {r['s']:.3f} |" for r in april),
    ]
    return "\n".join(lines)


def bn_digits_net(seed: int = 0) -> torch.nn.Module:
    """Two conv3x3-BatchNorm-ReLU blocks (8 channels) and a linear head for 1×8×8 digits, in eval mode.

    Its BatchNorm running statistics are those of the digits' train split (cumulative averages over one pass), as a
    global model trained on the client population would carry; the victims come from the test split.
    """
    from dglbench.datamodules import create_datamodule
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10),
    )  # fmt: skip
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    dm = create_datamodule("digits", num_victims=1)
    dm.setup("predict")
    model.train()
    with torch.no_grad():
        for images, _ in torch.utils.data.DataLoader(dm.train_dataset(), batch_size=64):
            model(images)
    return model.eval()


GRADINVERSION_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("Inverting Gradients (published)", "inverting_gradients", {}),
    ("GradInversion (published weights)", "gradinversion", {}),
    ("GradInversion, α_grad = 1", "gradinversion", {"gradient_weight": 1.0}),
    ("GradInversion, α_grad = 1, Langevin 0.01", "gradinversion", {"gradient_weight": 1.0, "langevin": 0.01}),
    ("— the same without BN and group priors", "gradinversion",
     {"gradient_weight": 1.0, "langevin": 0.01, "bn_weight": 0.0, "group_weight": 0.0}),
]  # fmt: skip


def measure_gradinversion(num_victims: int = 8, iterations: int = 200, restarts: int = 4) -> list[dict[str, Any]]:
    """PSNR per victim (batches of 4 digits) of each variant at the same budget, and its paired gain over IG."""
    from dglbench.datamodules import create_datamodule

    dm = create_datamodule("digits", num_victims=num_victims, images_per_victim=4)
    dm.setup("predict")
    model, case = bn_digits_net(), Case()
    mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
    box = ((0 - mean) / std, (1 - mean) / std)
    rows = []
    for label, name, params in GRADINVERSION_VARIANTS:
        attack = create_attack(name, max_iterations=iterations, restarts=restarts, **params)
        psnr, start = [], time.perf_counter()
        for j in range(num_victims):
            v = dm.victim(j)
            x, y = v["images"], v["labels"]
            payload = make_payload(case, flat_gradient(model, x, y), y)
            r = attack.run(model, payload, tuple(x.shape[1:]), box=box, generator=torch.Generator().manual_seed(j))
            metrics = reconstruction_metrics(r.images, x, denormalize=dm.denormalize, normalize=dm.normalize)
            psnr.append(min(float(metrics.psnr), PSNR_CAP) if r.status == "ok" else math.nan)
        print(label, [round(p, 1) for p in psnr], flush=True)
        rows.append({"label": label, "psnr": psnr, "s": (time.perf_counter() - start) / num_victims})
    base = rows[0]["psnr"]
    for r in rows:
        r["median"] = bootstrap_interval(r["psnr"], np.median)
        r["gain"] = bootstrap_interval([a - b for a, b in zip(r["psnr"], base)], np.median)
        r["wins"] = sum(a > b for a, b in zip(r["psnr"], base))
    return rows


def flat_gradient(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The client's FedSGD gradient (:func:`dglbench.gradients.flat_parameter_gradient`)."""
    from dglbench.gradients import flat_parameter_gradient

    return flat_parameter_gradient(model, x, y)


def run_prior(num_victims: int = 8, iterations: int = 200, restarts: int = 4) -> str:
    """The ``attacks-prior`` section: gradinversion vs Inverting Gradients (about 6 minutes on one CPU thread)."""
    torch.set_num_threads(1)
    rows = measure_gradinversion(num_victims, iterations, restarts)
    published, tuned = rows[1], rows[3]

    def verdict(row: dict[str, Any]) -> str:
        low, high = row["gain"][1], row["gain"][2]
        return "beats" if low > 0 else "loses to" if high < 0 else "does not clearly beat"

    lines = [
        f"**GradInversion at its published weights {verdict(published)} Inverting Gradients here; with the "
        f"gradient term rescaled it {verdict(tuned)} it, and dropping the BatchNorm and group priors changes the "
        f"median gain by {rows[4]['gain'][0] - tuned['gain'][0]:+.1f} dB.** On batches of 4 "
        f"digits through a small BatchNorm net, at the same budget ({iterations} Adam steps × {restarts} restarts), "
        f"GradInversion with breaching's weights (α_grad = 1e-4, a scale set for other models "
        f"and data) reaches a median {published['median'][0]:.1f} dB against IG's {rows[0]['median'][0]:.1f} dB. "
        f"With α_grad = 1 and breaching's Langevin 0.01 it gains "
        f"a median {tuned['gain'][0]:+.1f} dB [{tuned['gain'][1]:+.1f}, {tuned['gain'][2]:+.1f}] per victim over IG "
        f"(wins {tuned['wins']} of {num_victims}); the same without the BN and group priors gains "
        f"{rows[4]['gain'][0]:+.1f} dB. Gains are paired per victim, 95 % bootstrap intervals.",
        "",
        f"Embedded digits 1×8×8, {num_victims} victims of 4 images (labels given), conv(8)-BN-ReLU ×2 + linear "
        f"(`bn_digits_net`: running statistics of the train split, eval mode). Every attack: {iterations} steps, "
        f"{restarts} restarts, the restart of least matching cost returned. PSNR (dB) after one-to-one pairing.",
        "",
        "| attack | median PSNR [95 % CI] | paired gain over IG [95 % CI] | wins vs IG | s / victim |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r['label']} | {_db(r['median'])} | {r['gain'][0]:+.1f} [{r['gain'][1]:+.1f}, {r['gain'][2]:+.1f}] "
            f"| {r['wins']}/{num_victims} | {r['s']:.1f} |"
            for r in rows
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
