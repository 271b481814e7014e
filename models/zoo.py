"""A curated capability list of timm architectures for gradient leakage, and the check that runs them.

:data:`ZOO` holds small variants across timm's families, each with the ``create_model`` keyword
arguments that make it run on the input size it lists (3x32x32 wherever the architecture allows:
transformers get ``img_size=32`` and a smaller patch or window). Notes on entries whose kwargs go
beyond the input size:

- ``vgg11``: ``mlp_ratio=0.125`` narrows the 7x7 pre-logits convolution from 4096 to 512 channels
  (24M instead of 129M parameters); the convolutional body is VGG-11's.
- ``mixer_s16_224``: its entrypoint fixes ``patch_size=16``, so 32x32 inputs give 2x2 tokens.
- ``swin_tiny_patch4_window7_224``: ``window_size=4`` (8x8 tokens after the 4x4 patch embedding).
- ``pit_ti_224``: ``patch_size=4, stride=2`` keep a 15x15 token grid at 32x32.

:func:`check_entry` runs one entry the way a victim runs (pretrained=False, 10 classes, eval mode,
:func:`~dglbench.models.compat.make_twice_differentiable`), checks the double backward and computes the I2F
lower bound for Gaussian noise; :func:`capability_matrix` runs a list and :func:`format_table`
renders it. A failure is a row with ``works=False`` and a one-line reason, never an exception.

Example:
    >>> from dglbench.models.zoo import ZOO, capability_matrix, format_table
    >>> rows = capability_matrix(pattern="resnet10t", run_i2f=False, progress=False)
    >>> rows[0].works
    True
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from dglbench.models.compat import check_twice_differentiable, make_twice_differentiable
from tqdm.auto import tqdm

__all__ = ["ZOO", "ZooEntry", "ZooRow", "capability_matrix", "check_entry", "format_table"]

NUM_CLASSES = 10
NOISE_STD = 1e-3


@dataclass(frozen=True)
class ZooEntry:
    """One timm architecture: registry name, family, ``create_model`` kwargs (sorted pairs), input (C, H, W)."""

    name: str
    family: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    input_size: tuple[int, int, int] = (3, 32, 32)

    @property
    def create_kwargs(self) -> dict[str, Any]:
        """``kwargs`` as a dict for ``timm.create_model``."""
        return dict(self.kwargs)


@dataclass(frozen=True)
class ZooRow:
    """The outcome of :func:`check_entry`: parameters, whether every step worked (else why), and the time taken."""

    family: str
    name: str
    parameters: int
    input_size: tuple[int, int, int]
    works: bool
    reason: str | None
    seconds: float
    i2f_lower_bound: float | None = None


def _entry(name: str, family: str, input_size: tuple[int, int, int] = (3, 32, 32), **kwargs: Any) -> ZooEntry:
    return ZooEntry(name, family, tuple(sorted(kwargs.items())), input_size)


_VIT_32 = {"img_size": 32, "patch_size": 4}

ZOO: tuple[ZooEntry, ...] = (
    _entry("resnet10t", "ResNet"),
    _entry("resnet18", "ResNet"),
    _entry("resnet18d", "ResNet-D"),
    _entry("resnetv2_18", "ResNetV2 (pre-act)"),
    _entry("vgg11", "VGG", mlp_ratio=0.125),
    _entry("densenet121", "DenseNet"),
    _entry("dla46_c", "DLA"),
    _entry("ese_vovnet19b_slim_dw", "VoVNet"),
    _entry("repvgg_a0", "RepVGG"),
    _entry("mobileone_s0", "MobileOne"),
    _entry("regnetx_002", "RegNet"),
    _entry("hgnetv2_b0", "HGNetV2"),
    _entry("efficientnet_b0", "EfficientNet"),
    _entry("tf_efficientnet_b0", "EfficientNet (TF)"),
    _entry("tinynet_e", "TinyNet"),
    _entry("mobilenetv2_050", "MobileNetV2"),
    _entry("mobilenetv3_small_050", "MobileNetV3"),
    _entry("mobilenetv3_large_100", "MobileNetV3"),
    _entry("mobilenetv4_conv_small_050", "MobileNetV4"),
    _entry("mnasnet_small", "MnasNet"),
    _entry("ghostnet_050", "GhostNet"),
    _entry("lcnet_050", "LCNet"),
    _entry("rexnet_100", "ReXNet"),
    _entry("convnext_atto", "ConvNeXt"),
    _entry("inception_next_atto", "InceptionNeXt"),
    _entry("starnet_s050", "StarNet"),
    _entry("mambaout_femto", "MambaOut"),
    _entry("poolformer_s12", "PoolFormer"),
    _entry("edgenext_xx_small", "EdgeNeXt"),
    _entry("fastvit_t8", "FastViT"),
    _entry("vit_tiny_patch16_224", "ViT", **_VIT_32),
    _entry("deit_tiny_patch16_224", "DeiT", **_VIT_32),
    _entry("cait_xxs24_224", "CaiT", **_VIT_32),
    _entry("xcit_nano_12_p8_224", "XCiT", img_size=32),
    _entry("pit_ti_224", "PiT", img_size=32, patch_size=4, stride=2),
    _entry("swin_tiny_patch4_window7_224", "Swin", img_size=32, window_size=4),
    _entry("pvt_v2_b0", "PVT-v2"),
    _entry("coat_lite_tiny", "CoaT", img_size=32),
    _entry("levit_128s", "LeViT", img_size=32),
    _entry("efficientformerv2_s0", "EfficientFormerV2", img_size=32),
    _entry("efficientvit_b0", "EfficientViT (MIT)"),
    _entry("mobilevit_xxs", "MobileViT"),
    _entry("mixer_s16_224", "MLP-Mixer", img_size=32),
)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or "no message"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_entry(entry: ZooEntry, *, run_i2f: bool = True) -> ZooRow:
    """Create ``entry`` as a victim and check that gradient leakage can be measured on it.

    Steps: ``timm.create_model(pretrained=False, num_classes=10)`` (seeded), eval mode,
    :func:`make_twice_differentiable`, a forward pass on one random image,
    :func:`check_twice_differentiable`, and (``run_i2f``) the I2F lower bound for Gaussian noise
    δ ~ N(0, 1e-6 I) over all parameters, with ``tol=1e-2, max_iter=10``; it must be finite.

    Returns:
        a :class:`ZooRow`; any failure is caught into ``works=False`` and a one-line ``reason``.

    Example:
        >>> check_entry(ZooEntry("resnet10t", "ResNet"), run_i2f=False).works
        True
    """
    start = time.perf_counter()
    parameters, lower_bound, reason = 0, None, None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(entry.name, pretrained=False, num_classes=NUM_CLASSES, **entry.create_kwargs)
        model = make_twice_differentiable(model.eval())
        parameters = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((1, *entry.input_size), generator=generator)
        y = torch.randint(NUM_CLASSES, (1,), generator=generator)
        with torch.no_grad():
            logits = model(x)
        if tuple(logits.shape) != (1, NUM_CLASSES):
            raise ValueError(f"output shape {tuple(logits.shape)}, expected (1, {NUM_CLASSES})")
        check_twice_differentiable(model, entry.input_size, NUM_CLASSES)
        if run_i2f:
            from dglbench.influence import i2f_lower_bound  # the engine is optional for the rest

            noise = NOISE_STD * torch.randn(parameters, generator=generator)
            result = i2f_lower_bound(model, x, y, noise, tol=1e-2, max_iter=10)
            lower_bound = float(result.value[0])
            if not math.isfinite(lower_bound):
                scale = logits.abs().max().item()
                hint = f" (logits reach {scale:.1e}: the products overflow float32)" if scale > 1e6 else ""
                raise ValueError(f"I2F lower bound is {lower_bound}{hint}")
    except Exception as exc:  # one row per failure: the matrix must finish
        reason = _one_line(exc)
    seconds = time.perf_counter() - start
    return ZooRow(entry.family, entry.name, parameters, entry.input_size, reason is None, reason, seconds, lower_bound)


def capability_matrix(
    entries: Iterable[ZooEntry] = ZOO, pattern: str = "*", *, run_i2f: bool = True, progress: bool = True
) -> list[ZooRow]:
    """:func:`check_entry` for every entry whose name matches the shell-style ``pattern``.

    Example:
        >>> [r.name for r in capability_matrix(pattern="mobilenetv3_small*", run_i2f=False, progress=False)]
        ['mobilenetv3_small_050']
    """
    selected = [e for e in entries if fnmatch.fnmatchcase(e.name, pattern)]
    rows = []
    with tqdm(selected, desc="zoo", unit="model", disable=not progress) as bar:
        for entry in bar:
            bar.set_postfix_str(entry.name)
            rows.append(check_entry(entry, run_i2f=run_i2f))
    return rows


def format_table(rows: Iterable[ZooRow]) -> str:
    """A Markdown table: family | model | params | input | works | reason.

    Example:
        >>> print(format_table([ZooRow("ResNet", "resnet18", 11181642, (3, 32, 32), True, None, 1.0)]))
        | family | model | params | input | works | reason |
        |---|---|---:|---|---|---|
        | ResNet | resnet18 | 11.18M | 3x32x32 | yes |  |
    """
    lines = ["| family | model | params | input | works | reason |", "|---|---|---:|---|---|---|"]
    for row in rows:
        size = "x".join(str(s) for s in row.input_size)
        reason = (row.reason or "").replace("|", "\\|")
        works = "yes" if row.works else "no"
        lines.append(f"| {row.family} | {row.name} | {row.parameters / 1e6:.2f}M | {size} | {works} | {reason} |")
    return "\n".join(lines)
