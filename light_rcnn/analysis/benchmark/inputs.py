"""Synthetic inputs of the benchmark: random images and random instance ground truth."""
import numpy as np


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random ``H x W x 3`` uint8 image (BGR for detectron2; the same bytes as RGB for torchvision)."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8)


def random_polygons(h: int, w: int, n: int, rng: np.random.RandomState):
    """``n`` octagons inside random boxes of an ``h x w`` image.

    Returns:
        boxes ``(n, 4)`` float32 XYXY, and polygons as ``list[list[array]]`` (one polygon each).
    """
    boxes, polys = [], []
    for _ in range(n):
        bw = rng.uniform(0.15, 0.5) * w
        bh = rng.uniform(0.15, 0.5) * h
        x0 = rng.uniform(0, w - bw)
        y0 = rng.uniform(0, h - bh)
        cx, cy = x0 + bw / 2, y0 + bh / 2
        ang = np.arange(8) * (2 * np.pi / 8)
        poly = np.stack([cx + bw / 2 * np.cos(ang), cy + bh / 2 * np.sin(ang)], 1).reshape(-1)
        boxes.append([x0, y0, x0 + bw, y0 + bh])
        polys.append([poly.astype(np.float64)])
    return np.asarray(boxes, dtype=np.float32), polys
