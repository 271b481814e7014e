"""``make bench-gpu``: the GPU rows of BENCHMARKS.md, in one script that finishes within about 5 minutes.

On a machine with CUDA it measures, on ``cuda:0``: the I2F lower bound and exact I2F per victim (convnet5 at
1×28×28, cifar_resnet18 at 3×32×32, resnet50 at 3×224×224), victims per second with ``vmap`` against a loop,
Inverting Gradients iterations per second for one victim and for 8 victims batched, peak memory of each, and a
small trial under DDP over all visible GPUs whose records must equal the one-device records. Without a GPU the
same code runs on the CPU at a reduced size (``--quick``: convnet5 and cifar_resnet20, fewer victims and
iterations), so the
script is exercised by the test suite and says in its output which device it measured.

Run: ``python -m dglbench.bench_gpu`` (writes the ``gpu`` section of BENCHMARKS.md), ``--quick`` for the
reduced size, ``--output`` for another file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["compare_record_trees", "run"]


def _device() -> torch.device:
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """Seconds and peak memory (MiB: CUDA allocator peak, or the process's peak RSS on a CPU) of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return seconds, peak, out


def _model(name: str, in_chans: int, device: torch.device) -> nn.Module:
    import timm
    from dglbench import models

    model = timm.create_model(name, num_classes=10, in_chans=in_chans)
    return models.make_twice_differentiable(model).eval().to(device)


def bench_i2f(name: str, shape: tuple[int, ...], device: torch.device, victims: int) -> dict[str, Any]:
    """Lower bound and exact I2F (ε = 0.1) for one victim; victims/s for ``victims`` of them with vmap and a loop."""
    from dglbench.influence import i2f, i2f_lower_bound

    torch.manual_seed(0)
    model = _model(name, shape[0], device)
    d = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(1, *shape, device=device), torch.tensor([1], device=device)
    delta = 1e-3 * torch.randn(d, device=device)
    i2f_lower_bound(model, x, y, delta, max_iter=2)  # warm-up (kernels, allocator)
    lb_s, lb_mem, lb = _timed(lambda: i2f_lower_bound(model, x, y, delta, tol=1e-4), device)
    ex_s, ex_mem, ex = _timed(lambda: i2f(model, x, y, delta, eps=0.1, tol=1e-4), device)
    xs = [torch.randn(1, *shape, device=device) for _ in range(victims)]
    ys = [torch.tensor([j % 10], device=device) for j in range(victims)]
    ds = [1e-3 * torch.randn(d, device=device) for _ in range(victims)]
    vmap_s, vmap_mem, _ = _timed(lambda: i2f_lower_bound(model, xs, ys, ds, tol=1e-4, vectorize=True), device)
    loop_s, _, _ = _timed(lambda: [i2f_lower_bound(model, a, b, c, tol=1e-4) for a, b, c in zip(xs, ys, ds)], device)
    return {
        "model": name, "input": "×".join(map(str, shape)), "parameters": d,
        "lower_bound_s": lb_s, "lower_bound_products": int(lb.products[0]), "lower_bound_mib": lb_mem,
        "exact_s": ex_s, "exact_products": int(ex.products[0]), "exact_converged": bool(ex.converged[0]),
        "exact_mib": ex_mem, "victims": victims, "vmap_per_s": victims / vmap_s, "loop_per_s": victims / loop_s,
        "vmap_mib": vmap_mem,
    }  # fmt: skip


def bench_attack(device: torch.device, iterations: int, victims: int) -> dict[str, Any]:
    """Inverting Gradients iterations/s on convnet5 (1×28×28): one victim, and ``victims`` batched (vmap)."""
    from dglbench.attacks import InvertingGradients
    from dglbench.case import Case, make_payload
    from dglbench.gradients import flat_parameter_gradient

    torch.manual_seed(0)
    model = _model("convnet5", 1, device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = (torch.rand(victims, 1, 1, 28, 28, generator=gen) * 2 - 1).to(device)
    labels = torch.randint(0, 10, (victims, 1), generator=gen).to(device)
    payloads = [make_payload(Case(), flat_parameter_gradient(model, x, y), y) for x, y in zip(images, labels)]
    attack = InvertingGradients(max_iterations=iterations)
    one_s, one_mem, _ = _timed(lambda: attack.run(model, payloads[0], (1, 28, 28)), device)
    many_s, many_mem, _ = _timed(lambda: attack.run_many(model, payloads, (1, 28, 28)), device)
    return {
        "iterations": iterations, "victims": victims, "one_it_per_s": iterations / one_s, "one_mib": one_mem,
        "batched_it_per_s": victims * iterations / many_s, "batched_mib": many_mem,
    }  # fmt: skip


def _numeric_leaves(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON tree by its path, leaving out what differs between runs by design: timings, memory,
    provenance, and the solvers' own bookkeeping (residuals, product and step counts depend on which victims a
    process solves together)."""
    skip = ("seconds", "timing", "provenance", "memory", "host", "device", "rank", "residual", "products",
            "iterations", "final_loss")  # fmt: skip
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not any(s in str(key) for s in skip):
                out.update(_numeric_leaves(value, f"{prefix}.{key}"))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out.update(_numeric_leaves(value, f"{prefix}[{i}]"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


def compare_record_trees(a: Any, b: Any, rel: float = 1e-4) -> list[str]:
    """The paths whose numbers differ by more than ``rel`` (relative), or that only one tree has.

    Example:
        >>> compare_record_trees({"i2f": {"value": 1.0}, "seconds": 3}, {"i2f": {"value": 1.00001}, "seconds": 9})
        []
        >>> compare_record_trees({"i2f": {"value": 1.0}}, {"i2f": {"value": 2.0}})
        ['.i2f.value']
    """
    la, lb = _numeric_leaves(a), _numeric_leaves(b)
    bad = sorted(set(la) ^ set(lb))
    for key in sorted(set(la) & set(lb)):
        x, y = la[key], lb[key]
        if not (x == y or (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= rel * max(abs(x), abs(y)))):
            bad.append(key)
    return bad


def bench_ddp(devices: int, accelerator: str) -> dict[str, Any]:
    """A small trial on ``devices`` processes (DDP) and on one: wall time of each, and whether the records agree."""
    dglbench = str(Path(sys.executable).parent / "dglbench")
    args = [
        "--dataset_params.num_victims=4", "--dataset_params.image_size=8", "--defense=gaussian",
        "--defense_params.sigma=0.01", "--attack_params.max_iterations=20", "--lpips=false", "--quiet",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK")}
    env.setdefault("OMP_NUM_THREADS", "1")
    out: dict[str, Any] = {"devices": devices, "accelerator": accelerator}
    with tempfile.TemporaryDirectory() as tmp:
        records = {}
        for n in (1, devices):
            start = time.perf_counter()
            proc = subprocess.run(
                [dglbench, "run", "--accelerator", accelerator, "--devices", str(n), "--out", f"d{n}", *args],
                cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            out[f"seconds_{n}"] = time.perf_counter() - start
            if proc.returncode != 0:
                out["error"] = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
                return out
            (path,) = (Path(tmp) / f"d{n}" / "records").glob("*.json")
            records[n] = json.loads(path.read_text())
        out["differences"] = compare_record_trees(records[1], records[devices])
    return out


def run(quick: bool = False, ddp: bool = True) -> str:
    """Run every measurement on the available device and return the Markdown body of the section."""
    device = _device()
    gpus = torch.cuda.device_count()
    cases = [("convnet5", (1, 28, 28)), ("cifar_resnet20", (3, 32, 32))]
    if not quick:
        cases = [("convnet5", (1, 28, 28)), ("cifar_resnet18", (3, 32, 32)), ("resnet50", (3, 224, 224))]
    victims = 2 if quick else 8
    rows = [bench_i2f(name, shape, device, victims) for name, shape in cases]
    attack = bench_attack(device, iterations=20 if quick else 500, victims=victims)
    where = f"`{device}` ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else "the CPU (no GPU here)"
    lines = [
        f"Measured on {where}{', reduced size (--quick)' if quick else ''}; float32, batch 1, one victim per row "
        "unless stated; lower bound to 1e-4, exact I2F ε = 0.1 to 1e-4. Memory: CUDA allocator peak"
        f"{'' if device.type == 'cuda' else ' (here: the process peak RSS)'}.\n",
        f"| model | input | params | lower bound | exact I2F | {victims} victims: vmap | loop | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        conv = "" if r["exact_converged"] else ", NOT converged"
        lines.append(
            f"| {r['model']} | {r['input']} | {r['parameters']:,} | {r['lower_bound_s']:.3f} s "
            f"({r['lower_bound_products']} products) | {r['exact_s']:.3f} s ({r['exact_products']} products{conv}) "
            f"| {r['vmap_per_s']:.1f} victims/s | {r['loop_per_s']:.1f} victims/s "
            f"| {max(r['lower_bound_mib'], r['exact_mib'], r['vmap_mib']):.0f} MiB |"
        )
    lines += [
        "",
        f"Inverting Gradients on convnet5 (1×28×28), {attack['iterations']} iterations: one victim "
        f"{attack['one_it_per_s']:.0f} it/s ({attack['one_mib']:.0f} MiB); {attack['victims']} victims batched "
        f"{attack['batched_it_per_s']:.0f} victim-it/s ({attack['batched_mib']:.0f} MiB).",
    ]
    if ddp:
        n, acc = (gpus, "gpu") if gpus >= 1 else (2, "cpu")
        d = bench_ddp(n, acc)
        if "error" in d:
            lines.append(f"\nDDP ({acc}, {n} processes): FAILED: {d['error']}")
        else:
            same = "records equal to one device" if not d["differences"] else f"DIFFERENT: {d['differences'][:5]}"
            lines.append(
                f"\nDDP over {n} {'GPUs' if acc == 'gpu' else 'CPU processes (gloo)'}, 4 victims of a small trial: "
                f"{d[f'seconds_{n}']:.1f} s vs {d['seconds_1']:.1f} s on one device (wall, including start-up); {same}."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from dglbench.bench import machine
    from dglbench.io import atomic_write_text, replace_between_markers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced size (what a CPU can run in minutes)")
    parser.add_argument("--no-ddp", action="store_true", help="skip the DDP comparison")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    quick = args.quick
    body = run(quick=quick, ddp=not args.no_ddp)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = f"python -m dglbench.bench_gpu{' --quick' if quick else ''}"
    section = f"## GPU\n\nCommand: `{cmd}` (`make bench-gpu`). Machine: {machine()}. Date: {stamp}.\n\n{body}"
    path = Path(args.output)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    atomic_write_text(path, replace_between_markers(text, "gpu", section))
    print(body, flush=True)


if __name__ == "__main__":
    main()
