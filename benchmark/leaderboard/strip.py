"""A strip of an entry's reconstructions for the page: private images above, worst-case reconstructions below.

``submit`` writes ``<entry stem>.strip.png`` beside a protocol-2 entry from the images the run saved
(:func:`dglbench.layout.load_reconstructions`): the first :data:`STRIP_VICTIMS` victims, each column one victim,
the top row its private image (the first of its batch) and the bottom row the reconstruction of the attack its
worst PSNR came from that is paired with that image (one-to-one pairing of the batch by squared error, as the
metrics pair; attacks such as imprint return a batch in their own order), pixels as saved (uint8), enlarged
``SCALE`` times by repetition, separated by white lines. A victim on which every attack failed has no
reconstruction: its bottom cell is light grey crossed in red (not black, which would read as a reconstruction).
``render`` embeds the strips in the page (no file outside it is loaded). An entry without saved images has no
strip.

Example:
    >>> strip_path("lb/v2/entries/t/none-0123456789ab.json").name
    'none-0123456789ab.strip.png'
"""

from __future__ import annotations

import io
from pathlib import Path

__all__ = ["SCALE", "STRIP_VICTIMS", "strip_image", "strip_path", "write_strip"]

#: Victims shown per entry, and the enlargement factor of each pixel.
STRIP_VICTIMS = 8
SCALE = 2
_GAP = 2


def strip_path(entry_path: str | Path) -> Path:
    """The strip beside an entry file."""
    p = Path(entry_path)
    return p.with_name(p.name[: -len(".json")] + ".strip.png")


def strip_image(images_dir: str | Path, num_victims: int):
    """The strip as a uint8 array ``[H, W, 3]`` (``None`` when no victim has saved images)."""
    import numpy as np
    import torch
    from dglbench.errors import DglbenchError
    from dglbench.layout import load_reconstructions
    from dglbench.metrics import pair_reconstructions

    columns = []
    for j in range(min(num_victims, STRIP_VICTIMS)):
        try:
            images = load_reconstructions(images_dir, j)
        except DglbenchError:
            continue
        batch = images["original"]
        pair = [np.asarray((batch[0].expand(3, -1, -1) * 255).round().to(torch.uint8).permute(1, 2, 0))]
        if "worst" in images:
            worst_batch = images["worst"]
            worst = worst_batch[int(pair_reconstructions(worst_batch.float(), batch.float())[0])]
            pair.append(np.asarray((worst.expand(3, -1, -1) * 255).round().to(torch.uint8).permute(1, 2, 0)))
        else:
            pair.append(_failed_cell(*pair[0].shape[:2]))
        h, w = pair[0].shape[:2]
        column = np.full((2 * h + _GAP, w, 3), 255, dtype=np.uint8)
        column[:h], column[h + _GAP :] = pair
        columns.append(column)
    if not columns:
        return None
    h = columns[0].shape[0]
    out = np.full((h, sum(c.shape[1] for c in columns) + _GAP * (len(columns) - 1), 3), 255, dtype=np.uint8)
    x = 0
    for c in columns:
        out[:, x : x + c.shape[1]] = c
        x += c.shape[1] + _GAP
    return out.repeat(SCALE, axis=0).repeat(SCALE, axis=1)


def _failed_cell(h: int, w: int):
    """Light grey crossed by two red diagonals: no reconstruction (every attack failed on the victim)."""
    import numpy as np

    cell = np.full((h, w, 3), 220, dtype=np.uint8)
    rows = np.arange(h)
    for cols in ((rows * (w - 1)) // max(h - 1, 1), w - 1 - (rows * (w - 1)) // max(h - 1, 1)):
        cell[rows, cols] = (200, 0, 0)
    return cell


def write_strip(images_dir: str | Path, num_victims: int, path: str | Path) -> Path | None:
    """Write the strip as a PNG (no metadata, so the same images give the same bytes); ``None`` when no images."""
    from dglbench.io import atomic_write_bytes
    from PIL import Image

    pixels = strip_image(images_dir, num_victims)
    if pixels is None:
        return None
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", optimize=False)
    return atomic_write_bytes(path, buffer.getvalue())
