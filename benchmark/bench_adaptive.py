"""Adaptive vs plain attacks on every built-in defense family: median PSNR and the per-victim worst case.

For each defense family at two strengths, the same victims (embedded digits, convnet5 with DLG's uniform
init, one image per victim) are defended once, and every attack runs on the same payloads: Inverting
Gradients with the published global cosine, Inverting Gradients layer-wise (``cosine_scope="layer"``),
DLG, and the defense's adaptive attacks (:func:`dglbench.defenses.adaptive_attacks_for`). The table gives
each attack's median PSNR over the victims and the worst case: for each victim the best PSNR over all
attacks (what the strongest attacker in the suite gets), then the median.

Run ``python -m dglbench.bench_adaptive`` (prints the table) or ``python -m dglbench.bench --only adaptive``
(writes the BENCHMARKS.md section).

Example:
    >>> setting = digits_setting(num_victims=1)
    >>> row = compare_attacks(setting, "topk", {"ratio": 0.05}, iterations=5, dlg_iterations=1)
    >>> sorted(row["psnr"]), len(row["psnr"]["ig_masked"])
    (['dlg', 'ig_global', 'ig_layer', 'ig_masked'], 1)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from dglbench.attacks import create_attack
from dglbench.case import Case, DefenseContext, Payload, make_payload
from dglbench.defenses import adaptive_attacks_for, create_defense, run_defense
from dglbench.metrics import reconstruction_metrics
from torch import Tensor, nn

__all__ = ["DEFENSE_GRID", "Setting", "compare_attacks", "digits_setting", "run"]

#: (defense, params) rows of the table: every built-in family at two strengths (sign has none).
DEFENSE_GRID: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("gaussian", {"sigma": 0.01}),
    ("gaussian", {"sigma": 0.05}),
    ("laplace", {"scale": 0.01}),
    ("laplace", {"scale": 0.05}),
    ("dp_sgd", {"clip": 1.0, "sigma": 0.001}),
    ("dp_sgd", {"clip": 1.0, "sigma": 0.01}),
    ("pruning", {"ratio": 0.9}),
    ("pruning", {"ratio": 0.99}),
    ("topk", {"ratio": 0.1}),
    ("topk", {"ratio": 0.01}),
    ("quantization", {"bits": 4}),
    ("quantization", {"bits": 2}),
    ("quantization", {"mode": "sign"}),
    ("soteria", {"ratio": 0.5}),
    ("soteria", {"ratio": 0.9}),
    ("eigen_noise", {"scale": 1.0, "ranks": "top", "n": 4}),
    ("eigen_noise", {"scale": 5.0, "ranks": "top", "n": 4}),
]


@dataclass
class Setting:
    """The victims and the model every row attacks."""

    model: nn.Module
    datamodule: Any
    images: list[Tensor]  # one [B, C, H, W] batch per victim, normalized
    labels: list[Tensor]
    box: tuple[Tensor, Tensor]
    case: Case


def digits_setting(*, num_victims: int = 4, images_per_victim: int = 1, seed: int = 0) -> Setting:
    """convnet5 (DLG's uniform init, eval mode) on ``num_victims`` embedded 8×8 digits."""
    import timm
    from dglbench import models
    from dglbench.datamodules import DigitsDataModule

    dm = DigitsDataModule(num_victims=num_victims, images_per_victim=images_per_victim, seed=seed)
    dm.setup()
    model = timm.create_model("convnet5", num_classes=dm.num_classes, in_chans=dm.channels, img_size=dm.image_size)
    models.initialize(model, "uniform", seed=seed)
    models.make_twice_differentiable(model)
    model.eval()
    victims = [dm.victim(j) for j in range(num_victims)]
    mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
    box = ((0 - mean) / std, (1 - mean) / std)
    return Setting(model, dm, [v["images"] for v in victims], [v["labels"] for v in victims], box, Case())


def _payloads(setting: Setting, defense: Any, seed: int) -> list[Payload]:
    out = []
    for j, (x, y) in enumerate(zip(setting.images, setting.labels)):
        gen = torch.Generator().manual_seed(seed * 100_003 + j)
        defended = run_defense(defense, DefenseContext(setting.model, x, y, setting.case, gen)).defended
        out.append(make_payload(setting.case, defended, y))
    return out


def _psnr(setting: Setting, attack: Any, payloads: list[Payload], seed: int) -> list[float]:
    gens = [torch.Generator().manual_seed(seed * 100_003 + j) for j in range(len(payloads))]
    shape = setting.images[0].shape[1:]
    results = attack.run_many(setting.model, payloads, shape, box=setting.box, generator=gens)
    dm = setting.datamodule
    psnr = []
    for res, x in zip(results, setting.images):
        if res.status != "ok":
            psnr.append(float("nan"))
            continue
        metrics = reconstruction_metrics(res.images, x, denormalize=dm.denormalize, normalize=dm.normalize)
        psnr.append(min(float(metrics.psnr), 100.0))  # an exact copy is inf: cap for medians
    return psnr


def compare_attacks(
    setting: Setting,
    defense: str,
    params: dict[str, Any],
    *,
    iterations: int = 200,
    dlg_iterations: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """PSNR per victim of every attack in the suite on one defense; the same payloads for all.

    Returns:
        ``{"defense", "params", "adaptive": [names], "psnr": {attack: [per victim]}, "worst": [per victim],
        "seconds"}``; attacks: ``ig_global``, ``ig_layer``, ``dlg`` and the defense's adaptive attacks.
    """
    start = time.perf_counter()
    defense_obj = create_defense(defense, **params)
    payloads = _payloads(setting, defense_obj, seed)
    budget = {"max_iterations": iterations}
    suite: dict[str, Any] = {
        "ig_global": create_attack("inverting_gradients", cosine_scope="global", **budget),
        "ig_layer": create_attack("inverting_gradients", cosine_scope="layer", **budget),
        "dlg": create_attack("dlg", max_iterations=dlg_iterations, line_search="strong_wolfe"),
    }
    adaptive = adaptive_attacks_for(defense_obj)
    for name, attack_params in adaptive:
        suite[name] = create_attack(name, **{**budget, **attack_params})
    psnr = {name: _psnr(setting, attack, payloads, seed) for name, attack in suite.items()}
    worst = [max(values) for values in zip(*psnr.values())]
    return {
        "defense": defense,
        "params": params,
        "adaptive": [n for n, _ in adaptive],
        "psnr": psnr,
        "worst": worst,
        "seconds": time.perf_counter() - start,
    }


def _median(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def _row(r: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "—"
    med = {name: _median(v) for name, v in r["psnr"].items()}
    plain = max(med["ig_global"], med["ig_layer"], med["dlg"])
    adaptive = [f"`{n}` {med[n]:.1f}" for n in r["adaptive"]]
    gain = " / ".join(f"{med[n] - plain:+.1f}" for n in r["adaptive"]) or "—"
    return (
        f"| {r['defense']} | {params} | {med['ig_global']:.1f} | {med['ig_layer']:.1f} | {med['dlg']:.1f} "
        f"| {', '.join(adaptive) or '—'} | {gain} | **{_median(r['worst']):.1f}** |"
    )


def run(*, num_victims: int = 4, iterations: int = 200, dlg_iterations: int = 20) -> str:
    """The adaptive-attack section of BENCHMARKS.md (about 10 minutes on one CPU thread)."""
    torch.set_num_threads(1)
    setting = digits_setting(num_victims=num_victims)
    rows = []
    for defense, params in DEFENSE_GRID:
        r = compare_attacks(setting, defense, params, iterations=iterations, dlg_iterations=dlg_iterations)
        print(_row(r), f"({r['seconds']:.0f} s)", flush=True)
        rows.append(r)
    lines = [
        f"Embedded digits (1×8×8), convnet5 with DLG's uniform init, {num_victims} victims of one image, labels "
        f"given, one thread. Inverting Gradients: {iterations} signed-Adam steps, 1 restart, TV 1e-4 (adaptive "
        f"attacks the same); DLG: {dlg_iterations} L-BFGS steps with strong-Wolfe line search. Median PSNR (dB) "
        f"over the victims; *gain* = adaptive − best plain attack (medians); *worst case* = median over victims of "
        f"the best PSNR any attack reached on that victim.",
        "",
        "| defense | params | IG global (published) | IG layer-wise | DLG | adaptive | gain | worst case |",
        "|---|---|---:|---:|---:|---|---:|---:|",
        *(_row(r) for r in rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
