"""Writes the image folder the example spec reads: two classes of small synthetic photos
(horizontal and vertical stripes, in varied colours and sizes), deterministic, about 100 KB in all.

    python examples/images/make_images.py && pytest examples/images/pics.yaml
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def stripes(rng, vertical: bool) -> Image.Image:
    w, h = int(rng.integers(36, 56)), int(rng.integers(36, 56))
    period = int(rng.integers(4, 9))
    a = rng.integers(0, 256, size=3)
    b = 255 - a
    idx = np.arange(w if vertical else h) // (period // 2) % 2
    line = np.where(idx[:, None] == 0, a, b).astype(np.uint8)  # (w or h, 3)
    img = np.broadcast_to(line[None, :, :], (h, w, 3)) if vertical else np.broadcast_to(line[:, None, :], (h, w, 3))
    noise = rng.integers(-3, 4, size=(h, w, 3))
    return Image.fromarray(np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8))


def main() -> None:
    rng = np.random.default_rng(0)
    for cls, vertical in (("horizontal", False), ("vertical", True)):
        folder = os.path.join(HERE, "pics", cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(12):
            stripes(rng, vertical).save(os.path.join(folder, f"{i:02d}.png"))


if __name__ == "__main__":
    main()
