"""Draw the synthetic example image that ships with dermfm (no patient data, no licence issue).

It imitates a dermoscopy field: skin-coloured background, a dark irregular pigmented lesion with
a reticular network and the circular border of a dermoscope. It illustrates the quick start and
is not a medical image; re-run this script to regenerate
``src/dermfm/examples/synthetic_lesion.jpg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SIZE = 384
OUT = Path(__file__).resolve().parents[1] / "src" / "dermfm" / "examples" / "synthetic_lesion.jpg"


def main() -> None:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cx, cy = SIZE / 2 + 8, SIZE / 2 - 6
    angle = np.arctan2(yy - cy, xx - cx)
    radius = np.hypot(xx - cx, yy - cy)
    # irregular border: a few low-frequency harmonics on the radius
    edge = 105 + sum(
        rng.uniform(4, 14) * np.sin(k * angle + rng.uniform(0, 6.28)) for k in (2, 3, 5, 7)
    )
    lesion = np.clip((edge - radius) / 12.0, 0, 1)
    skin = np.stack([224 - 0.05 * yy, 176 - 0.04 * yy, 150 - 0.03 * xx], axis=-1)
    network = 0.5 + 0.5 * np.sin(xx / 4.3 + np.sin(yy / 9.0)) * np.sin(yy / 4.1 + np.cos(xx / 11.0))
    depth = np.clip(1.2 - radius / edge, 0, 1)
    brown = np.stack(
        [
            120 - 60 * depth - 25 * network,
            75 - 45 * depth - 20 * network,
            55 - 30 * depth - 10 * network,
        ],
        axis=-1,
    )
    img = skin * (1 - lesion[..., None]) + brown * lesion[..., None]
    img += rng.normal(0, 4, img.shape)
    scope = np.clip((radius_from_centre(xx, yy) - SIZE * 0.47) / 6.0, 0, 1)
    img = img * (1 - scope[..., None])
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.8)
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    picture.save(OUT, quality=90)
    print(f"wrote {OUT}")


def radius_from_centre(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Distance of each pixel from the image centre (for the dermoscope's circular field)."""
    return np.hypot(xx - SIZE / 2, yy - SIZE / 2)


if __name__ == "__main__":
    main()
