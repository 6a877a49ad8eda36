"""YOLOv5's AutoAnchor: before training, check the anchors against the training labels and evolve new ones when
they fit poorly.

A label fits an anchor when neither side ratio exceeds `anchor_t` (4, the loss's matching rule); the best
possible recall (BPR) is the share of labels with at least one fitting anchor. Labels are measured at the
training size (each image's longest side = imgsz, a random 0.9-1.1 scale as augmentation does). At BPR above
0.98 the anchors stay; below, k-means on the whitened label sizes seeds 1,000 generations of mutation (YOLOv5's
genetic search on the mean best ratio of fitting labels), and the result replaces the anchors only when its BPR
is higher. Draws come from a generator seeded by the run's seed, so a run repeats.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

GOOD_FIT_BPR = 0.98


def label_sizes(items: list, labels: list[torch.Tensor], *, imgsz: int, rng: np.random.Generator | None = None,
                image_wh: list[tuple[int, int]] | None = None) -> np.ndarray:
    """(n, 2) label widths and heights in pixels at the training size; `rng`: a 0.9-1.1 scale per image.
    `image_wh`: each item's (width, height) if known (the image check caches them), else read from the headers."""
    sizes = []
    for index, ((image, _), boxes) in enumerate(zip(items, labels)):
        if not len(boxes):
            continue
        if image_wh is not None:
            w, h = image_wh[index]
        else:
            with Image.open(image) as im:
                w, h = im.size
        scale = imgsz / max(w, h) * (rng.uniform(0.9, 1.1) if rng is not None else 1.0)
        sizes.append(boxes[:, 3:5].numpy() * np.array([w, h]) * scale)
    return np.concatenate(sizes).astype(np.float32) if sizes else np.zeros((0, 2), np.float32)


def best_ratios(anchors: torch.Tensor, wh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per label and anchor the worse side ratio (<= 1), and per label its best anchor's."""
    r = wh[:, None] / anchors[None]
    x = torch.min(r, 1 / r).min(2).values
    return x, x.max(1).values


def anchor_fit(anchors: torch.Tensor, wh: torch.Tensor, *, anchor_t: float = 4.0) -> tuple[float, float]:
    """(best possible recall, fitting anchors per label) of pixel anchors (k, 2) for label sizes (n, 2)."""
    x, best = best_ratios(anchors, wh)
    return float((best > 1 / anchor_t).float().mean()), float((x > 1 / anchor_t).float().sum(1).mean())


def evolve_anchors(wh: np.ndarray, n: int, *, imgsz: int, anchor_t: float = 4.0, generations: int = 1000,
                   rng: np.random.Generator) -> np.ndarray:
    """n pixel anchors (sorted by area) fitted to label sizes: k-means, then YOLOv5's mutation search."""
    wh = wh[(wh >= 2.0).any(1)]                               # labels of 2 px or less say nothing about shape
    if len(wh) >= n:
        sigma = wh.std(0) + 1e-9
        seed = int(rng.integers(2**31))
        # imported here, not at the top: a second of import for every command that never refits anchors
        from sklearn.cluster import KMeans
        k = KMeans(n_clusters=n, n_init=1, max_iter=30, random_state=seed).fit(wh / sigma).cluster_centers_ * sigma
    else:
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * imgsz
    labels = torch.from_numpy(wh)

    def fitness(anchors: np.ndarray) -> float:
        _, best = best_ratios(torch.from_numpy(anchors.astype(np.float32)), labels)
        return float((best * (best > 1 / anchor_t).float()).mean())

    score = fitness(k)
    for _ in range(generations):
        factors = np.ones_like(k)
        while (factors == 1).all():                            # mutate until something changes
            mutate = rng.random(k.shape) < 0.9
            factors = (mutate * rng.random() * rng.standard_normal(k.shape) * 0.1 + 1).clip(0.3, 3.0)
        candidate = (k * factors).clip(min=2.0)
        candidate_score = fitness(candidate)
        if candidate_score > score:
            k, score = candidate, candidate_score
    return k[np.argsort(k.prod(1))].astype(np.float32)


def check_anchors_(head: torch.nn.Module, items: list, labels: list[torch.Tensor], *, imgsz: int, seed: int,
                   anchor_t: float = 4.0, image_wh: list[tuple[int, int]] | None = None) -> str:
    """Keep or replace a Detect head's anchors (stride units) for this training data; returns what was done."""
    rng = np.random.default_rng(seed)
    wh = torch.from_numpy(label_sizes(items, labels, imgsz=imgsz, rng=rng, image_wh=image_wh))
    if not len(wh):
        return "AutoAnchor: no labels to check the anchors against; kept"
    stride = head.stride.view(-1, 1, 1).to(head.anchors.device)
    current = (head.anchors * stride).view(-1, 2).cpu()
    bpr, per_label = anchor_fit(current, wh, anchor_t=anchor_t)
    said = f"AutoAnchor: {per_label:.2f} anchors/label, best possible recall {bpr:.3f}"
    if bpr > GOOD_FIT_BPR:
        return said + "; the anchors fit, kept"
    evolved = torch.from_numpy(evolve_anchors(wh.numpy(), current.shape[0], imgsz=imgsz, anchor_t=anchor_t, rng=rng))
    new_bpr, _ = anchor_fit(evolved, wh, anchor_t=anchor_t)
    if new_bpr <= bpr:
        return said + f"; evolved anchors reach {new_bpr:.3f}, no better: kept"
    with torch.no_grad():
        # smallest anchors to the finest scale (the strides grow from P3 to P5)
        head.anchors.copy_((evolved.view_as(head.anchors).to(head.anchors.device)) / stride)
    sizes = ", ".join(f"{w:.0f}x{h:.0f}" for w, h in evolved.tolist())
    return said + f"; replaced by evolved anchors (best possible recall {new_bpr:.3f}): {sizes}"
