"""Time and peak memory of the FedAvg I2F lower bound against the number of local steps τ.

Under FedAvg the products ``K v`` and ``Kᵀ u`` go through the unrolled local steps, so the stored linearization
(the VJP) holds ``τ`` double-backward graphs and each product costs about ``τ`` FedSGD products. Each ``τ`` is
measured in a fresh process. "linearization" is the resident memory that building the operator (the forward
pass and the stored VJP through the ``τ`` steps, held for every later ``Kᵀ u``) added, read from
``/proc/self/status`` after a one-image FedSGD warm-up; "peak growth" is how far the I2F runs then raised the
process's peak resident memory (``ru_maxrss``). On CUDA the peak allocated memory
(``torch.cuda.max_memory_allocated``) is reported too.

Run: ``python -m dglbench.bench_fedavg [--taus 1 2 5] [--side 16] [--batch 2] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn


def convnet(side: int, channels: int = 1, classes: int = 10) -> nn.Module:
    """A small sigmoid ConvNet (DLG's LeNet, 4 convolutions of 12 channels) with U(−0.5, 0.5) weights."""
    layers: list[nn.Module] = []
    c, size = channels, side
    for stride in (2, 2, 1, 1):
        layers += [nn.Conv2d(c, 12, 5, stride, 2), nn.Sigmoid()]
        c, size = 12, (size - 1) // stride + 1
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(12 * size * size, classes))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5, generator=gen)
    return model.eval()


def _current_rss_kib() -> int:
    """The process's resident memory now (Linux ``/proc/self/status``), in KiB; 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def measure(tau: int, side: int, batch: int, device: str, repeats: int = 3) -> dict[str, float]:
    """One FedAvg I2F lower bound (τ full-batch local steps, η = 1e-4) on a random batch: time and peak memory."""
    from dglbench.case import Case
    from dglbench.gradients import GradientOperator
    from dglbench.influence import i2f_lower_bound

    torch.manual_seed(0)
    model = convnet(side).to(device)
    x = torch.randn(batch, 1, side, side, device=device)
    y = torch.arange(batch, device=device) % 10
    delta = 1e-6 * torch.randn(sum(p.numel() for p in model.parameters()), device=device)
    case = Case(update="fedavg", local_steps=tau, local_lr=1e-4)
    GradientOperator(model, x[:1], y[:1])  # loads the kernels; its small graph is freed
    before = _current_rss_kib()
    op = GradientOperator(model, x[None], y[None], stacked=True, update=case.update_rule())  # the stored VJP
    held = (_current_rss_kib() - before) / 1024
    del op
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    i2f_lower_bound(model, x, y, delta, case=case)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = i2f_lower_bound(model, x, y, delta, case=case)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    row = {
        "tau": tau,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": sorted(times)[len(times) // 2],
        "products": int(out.products[0]),
        "linearization_mib": held,
        "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024,
        "value": float(out.value[0]),
    }
    if device == "cuda":
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taus", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--side", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process: one τ, JSON out
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.side, args.batch, args.device)))
        return
    common = ["--side", str(args.side), "--batch", str(args.batch), "--device", args.device]
    print(f"FedAvg I2F lower bound, convnet on 1x{args.side}x{args.side}, batch {args.batch}, {args.device}")
    print(
        "| τ | parameters | seconds | K/Kᵀ products | linearization (MiB) | peak growth (MiB) | CUDA peak (MiB) "
        "| I2F_lb |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for tau in args.taus:
        cmd = [sys.executable, "-m", "dglbench.bench_fedavg", "--one", str(tau), *common]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        cuda = f"{row['cuda_peak_mib']:.1f}" if "cuda_peak_mib" in row else "–"
        print(
            f"| {row['tau']} | {row['parameters']} | {row['seconds']:.3f} | {row['products']} | "
            f"{row['linearization_mib']:.1f} | {row['rss_growth_mib']:.0f} | {cuda} | {row['value']:.4g} |"
        )


if __name__ == "__main__":
    main()
