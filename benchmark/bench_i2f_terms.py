"""The I2F terms of a record: what the new terms cost, and whether attack-aware I2F tracks a layer-wise cosine attack.

Two measurements on the demo-size setting (embedded 8×8 digits, convnet5 with DLG's uniform initialization):

* **cost** — :func:`dglbench.influence.estimate_i2f` as trials ran it before (one absolute ε = 0.1) against the
  terms a trial records now (ε = 0, the minimum-norm solution; ε = 10⁻³ λ_max; the damped lower bounds; the
  attack-aware rows ``s* g̃ − g``, globally and per tensor): products per victim and wall time.
* **tracking** — a per-layer clipped Gaussian defense (each parameter tensor clipped to norm ``C``, then
  ``N(0, (σC)²)`` per entry) at two strengths σ, attacked by Inverting Gradients with the layer-wise cosine
  (``cosine_scope="layer"``); Spearman's rho between the attack's error ``‖x̂ − x‖`` and each I2F term, with
  percentile-bootstrap 95 % intervals (:func:`dglbench.metrics.correlation`), per strength and pooled.

``python -m dglbench.bench --only i2f-terms`` writes the section; ``python -m dglbench.bench_i2f_terms`` prints it.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch
from dglbench.bench_adaptive import digits_setting
from dglbench.gradients import flat_parameter_gradient, parameter_shapes
from dglbench.influence import estimate_i2f
from dglbench.metrics import correlation
from torch import Tensor

__all__ = ["clipped_gaussian", "measure_cost", "measure_tracking", "run"]

COST_TERMS: dict[str, dict[str, Any]] = {
    "before: exact at eps 0.1": {"eps": (0.1,)},
    "eps 0 and 1e-3 lmax": {"eps": (0.0,), "eps_relative": (1e-3,)},
    "now: eps 0 and 1e-3 lmax, attack-aware": {"eps": (0.0,), "eps_relative": (1e-3,), "rescale": True},
}


def clipped_gaussian(clean: Tensor, sizes: list[int], clip: float, sigma: float, generator: torch.Generator) -> Tensor:
    """Per-tensor clipping to norm ``clip``, then ``N(0, (sigma·clip)²)`` noise on every entry; flat ``[d_θ]``."""
    parts = []
    for g in clean.split(sizes):
        clipped = g * min(1.0, clip / max(float(g.norm()), 1e-12))
        parts.append(clipped + sigma * clip * torch.randn(g.shape, generator=generator, dtype=g.dtype))
    return torch.cat(parts)


def measure_cost(num_victims: int = 8, sigma: float = 0.01, repeats: int = 3) -> list[dict[str, Any]]:
    """Products per victim and median wall time of each term set in :data:`COST_TERMS` (Gaussian noise ``sigma``)."""
    s = digits_setting(num_victims=num_victims)
    gen = torch.Generator().manual_seed(0)
    deltas = [sigma * torch.randn(sum(p.numel() for p in s.model.parameters()), generator=gen) for _ in s.images]
    rows = []
    for name, kwargs in COST_TERMS.items():
        times, cpu, est = [], [], None
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            est = estimate_i2f(s.model, s.images, s.labels, deltas, cg_tol=1e-4, cg_max_iter=300, **kwargs)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        assert est is not None
        zero = est.exact.get(0.0)
        rows.append({
            "terms": name, "products": float(est.products.double().mean()), "seconds": statistics.median(times),
            "cpu": statistics.median(cpu),
            "ill_conditioned": None if zero is None else int(zero.ill_conditioned.sum()), "victims": num_victims,
            "load": os.getloadavg()[0],
        })  # fmt: skip
    return rows


def measure_tracking(
    num_victims: int = 32, sigmas: tuple[float, ...] = (0.003, 0.03), iterations: int = 200
) -> dict[str, Any]:
    """Attack error and I2F terms per victim under the per-layer clipped Gaussian defense at each ``sigma``.

    ``C`` is the median per-tensor norm of the clean gradients (so clipping rescales about half the tensors).
    """
    from dglbench.attacks import create_attack
    from dglbench.case import make_payload

    s = digits_setting(num_victims=num_victims)
    sizes = [int(torch.Size(shape).numel()) for shape in parameter_shapes(s.model).values()]
    clean = [flat_parameter_gradient(s.model, x, y).detach() for x, y in zip(s.images, s.labels)]
    clip = float(torch.stack([g.norm() for c in clean for g in c.split(sizes)]).median())
    attack = create_attack("inverting_gradients", cosine_scope="layer", max_iterations=iterations, tv_weight=0.0)
    out: dict[str, Any] = {"clip": clip, "victims": num_victims, "iterations": iterations, "by_sigma": {}}
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(1)
        defended = [clipped_gaussian(g, sizes, clip, sigma, gen) for g in clean]
        deltas = [d - g for d, g in zip(defended, clean)]
        est = estimate_i2f(
            s.model, s.images, s.labels, deltas, eps=(0.0,), eps_relative=(1e-3,), rescale=True, cg_tol=1e-4,
            cg_max_iter=300,
        )  # fmt: skip
        payloads = [make_payload(s.case, d, y) for d, y in zip(defended, s.labels)]
        gens = [torch.Generator().manual_seed(100 + j) for j in range(num_victims)]
        results = attack.run_many(s.model, payloads, s.images[0].shape[1:], box=s.box, generator=gens)
        error = []
        for res, x in zip(results, s.images):
            ok = res.status == "ok"
            error.append(float((res.images - x).norm()) if ok else float("nan"))  # one image: no pairing
        rel, zero = est.relative[1e-3], est.exact[0.0]
        out["by_sigma"][sigma] = {
            "error": error,
            "plain": rel.value.tolist(), "layer": rel.rescaled_layer.tolist(), "global": rel.rescaled.tolist(),
            "plain_eps0": zero.value.tolist(), "layer_eps0": zero.rescaled_layer.tolist(),
            "lower_bound": rel.lower_bound.tolist(), "ill_conditioned_eps0": int(zero.ill_conditioned.sum()),
            "failed": sum(r.status != "ok" for r in results),
        }  # fmt: skip
    return out


TERMS = {
    "plain": "exact I2F, eps = 1e-3 lmax",
    "layer": "attack-aware (per tensor), eps = 1e-3 lmax",
    "global": "attack-aware (one scale), eps = 1e-3 lmax",
    "plain_eps0": "exact I2F, eps = 0",
    "layer_eps0": "attack-aware (per tensor), eps = 0",
    "lower_bound": "lower bound, eps = 1e-3 lmax",
}


def _rho(x: list[float], y: list[float]) -> tuple[str, tuple[float | None, Any]]:
    c = correlation(x, y, bootstrap=2000)
    if c["spearman"] is None:
        return f"– ({c['reason']})", (None, None)
    lo, hi = c["spearman_ci"]
    return f"{c['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={c['n']})", (c["spearman"], (lo, hi))


def _finding(tracking: dict[str, Any], rhos: dict[str, dict[str, Any]]) -> str:
    """Words first: how each term moves with the strength against the attack error, then the correlations."""
    by = tracking["by_sigma"]
    lo, hi = list(by)[0], list(by)[-1]

    def med(s: float, key: str) -> float:
        return statistics.median(by[s][key])

    def grow(key: str) -> str:
        return f"{med(lo, key):.3g} → {med(hi, key):.3g} ({med(hi, key) / med(lo, key):.1f}x)"

    def rho(term: str, key: str) -> str:
        value, ci = rhos[term][key]
        return "–" if value is None else f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"

    def overlap(key: str) -> bool:
        (_, a), (_, b) = rhos["layer"][key], rhos["plain"][key]
        return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]

    g, p = rhos["global"]["pooled"][0], rhos["plain"]["pooled"][0]
    global_helps = "helps less" if g is not None and p is not None and g > p + 0.1 else "does not help here"
    within = "; ".join(f"sigma {s}: {rho('layer', str(s))} vs {rho('plain', str(s))}" for s in by)
    overlapping = [str(s) for s in by if overlap(str(s))]
    apart = f"the intervals overlap at sigma {', '.join(overlapping)}" if overlapping else "the intervals are apart"
    return (
        f"From sigma {lo} to {hi} the layer-wise cosine attack's median error grows {grow('error')}; the "
        f"attack-aware I2F (one scale per tensor) follows it, {grow('layer')}, while plain I2F stays put, "
        f"{grow('plain')}: per-layer clipping dominates δ = g̃ − g, and the attack does not see it. Pooled over both "
        f"strengths, Spearman's rho with the attack error is {rho('layer', 'pooled')} for attack-aware I2F against "
        f"{rho('plain', 'pooled')} for plain I2F (both at eps = 1e-3 lmax). Within one strength both rank victims "
        f"(attack-aware vs plain: {within}; {apart}). One global scale {global_helps} "
        f"(pooled {rho('global', 'pooled')}): the clipping rescales each tensor differently."
    )


def run() -> str:
    """The BENCHMARKS.md section: cost table, then tracking finding and table."""
    cost = measure_cost()
    base = cost[0]
    lines = [
        "**Cost.** " + _cost_finding(cost) + "\n",
        f"{base['victims']} victims vectorized, Gaussian noise sigma = 0.01, CG tol 1e-4, one thread, median of 3 "
        f"runs. The machine was shared (1-minute load average {min(r['load'] for r in cost):.1f} to "
        f"{max(r['load'] for r in cost):.1f} on {os.cpu_count()} cores), so the CPU time of the process is the "
        "measure; wall time is shown for completeness:\n",
        "| terms | K / Kᵀ products per victim | CPU time | wall time | eps-0 solves flagged ill-conditioned |",
        "|---|---|---|---|---|",
    ]
    for r in cost:
        flagged = "–" if r["ill_conditioned"] is None else f"{r['ill_conditioned']} of {r['victims']}"
        lines.append(
            f"| {r['terms']} | {r['products']:.0f} ({r['products'] / base['products']:.1f}x) "
            f"| {r['cpu']:.2f} s ({r['cpu'] / base['cpu']:.1f}x) | {r['seconds']:.2f} s | {flagged} |"
        )
    tracking = measure_tracking()
    sig = list(tracking["by_sigma"])
    rhos: dict[str, dict[str, Any]] = {t: {} for t in TERMS}
    table = ["| term | " + " | ".join(f"sigma = {s}" for s in sig) + " | pooled |", "|---" * (len(sig) + 2) + "|"]
    for term, label in TERMS.items():
        cells = []
        for s in sig:
            d = tracking["by_sigma"][s]
            text, value = _rho(d[term], d["error"])
            rhos[term][str(s)] = value
            cells.append(text)
        pooled_x = [v for s in sig for v in tracking["by_sigma"][s][term]]
        pooled_y = [v for s in sig for v in tracking["by_sigma"][s]["error"]]
        text, rhos[term]["pooled"] = _rho(pooled_x, pooled_y)
        table.append(f"| {label} | " + " | ".join(cells) + f" | {text} |")
    errors = ", ".join(f"sigma {s}: {statistics.median(d['error']):.3g}" for s, d in tracking["by_sigma"].items())
    flagged = ", ".join(f"sigma {s}: {d['ill_conditioned_eps0']}" for s, d in tracking["by_sigma"].items())
    failed = sum(d["failed"] for d in tracking["by_sigma"].values())
    lines += [
        "",
        "**Which term tracks a layer-wise cosine attack.** " + _finding(tracking, rhos) + "\n",
        f"Per-layer clipped Gaussian defense (each parameter tensor clipped to C = {tracking['clip']:.3g}, the median "
        f"per-tensor gradient norm, then N(0, (sigma C)^2) per entry); Inverting Gradients with the layer-wise cosine, "
        f"{tracking['iterations']} iterations, no TV, one restart; {tracking['victims']} victims per strength "
        f"(failed attacks: {failed}). Median attack error ||x^ - x||: {errors}. eps-0 solves flagged "
        f"ill-conditioned: {flagged}. Spearman rho of each term with the attack error, 95 % bootstrap intervals:\n",
        *table,
    ]
    return "\n".join(lines) + "\n"


def _cost_finding(cost: list[dict[str, Any]]) -> str:
    base, damping, now = cost
    return (
        f"The terms a trial now records (eps = 0, eps = 1e-3 lmax, their lower bounds, and the attack-aware rows) "
        f"cost {now['products'] / base['products']:.1f}x the products and {now['cpu'] / base['cpu']:.1f}x "
        f"the CPU time of the single exact term at eps = 0.1 that trials recorded before "
        f"({now['products']:.0f} vs {base['products']:.0f} products per victim). Most of it is damping that no "
        f"longer swamps the spectrum: at eps = 0.1 >> lambda_max CG stops after a few steps, at eps = 0 and "
        f"1e-3 lmax it has to resolve the spectrum ({damping['products']:.0f} products). The attack-aware rows "
        f"triple the right-hand sides of the same batched CG: {now['products'] / damping['products']:.1f}x the "
        f"products but {now['cpu'] / damping['cpu']:.1f}x the CPU time (the rows share each vectorized pass). The "
        "lower bounds are free. A trial that needs only the old term keeps it with `eps: [0.1]`."
    )


if __name__ == "__main__":
    print(run())
