"""AutoAnchor: anchors that fit the labels stay; poorly fitting ones are replaced by better evolved ones, repeatably."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_model
from utils.data import verify
from utils.data.verify import image_sizes, verify_images
from utils.detection.anchors import anchor_fit, check_anchors_, evolve_anchors, label_sizes


def test_fit_counts_labels_within_the_ratio_threshold():
    anchors = torch.tensor([[10.0, 10.0], [100.0, 50.0]])
    wh = torch.tensor([[10.0, 30.0], [10.0, 50.0], [200.0, 100.0], [1000.0, 1000.0]])
    bpr, per_label = anchor_fit(anchors, wh)
    assert bpr == pytest.approx(0.5)                  # 10x30 fits 10x10 (ratio 3 < 4); 200x100 fits 100x50
    assert per_label == pytest.approx((1 + 0 + 1 + 0) / 4)


def thin_boxes(root, *, count=12, size=(320, 240)):
    """Images with long thin boxes (about 20:1 and 1:30), a shape YOLOv5's COCO anchors cannot match within 4x."""
    items, labels = [], []
    rng = np.random.default_rng(0)
    for i in range(count):
        image = root / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(image)
        w, h = (0.8, 0.05) if i % 2 else (0.02, 0.8)
        labels.append(torch.tensor([[0, 0.5, 0.5, w, h]], dtype=torch.float32))
        items.append((image, root / f"{i}.txt"))
    return items, labels


def test_poorly_fitting_anchors_are_replaced_by_better_ones_repeatably(tmp_path):
    items, labels = thin_boxes(tmp_path)
    head = build_model("yolov5n", num_classes=2).get_classifier()
    before = head.anchors.clone()
    wh = torch.from_numpy(label_sizes(items, labels, imgsz=320))
    old_bpr, _ = anchor_fit((before * head.stride.view(-1, 1, 1)).view(-1, 2), wh)
    said = check_anchors_(head, items, labels, imgsz=320, seed=0)
    new_bpr, _ = anchor_fit((head.anchors * head.stride.view(-1, 1, 1)).view(-1, 2), wh)
    assert old_bpr < 0.98 and new_bpr > old_bpr and "replaced by evolved anchors" in said
    areas = (head.anchors * head.stride.view(-1, 1, 1)).prod(-1).mean(-1)
    assert torch.all(areas[1:] >= areas[:-1]), "smallest anchors on the finest scale"
    again = build_model("yolov5n", num_classes=2).get_classifier()
    check_anchors_(again, items, labels, imgsz=320, seed=0)
    assert torch.equal(again.anchors, head.anchors)
    # the image sizes the image check keeps give the same anchors as the files' headers
    paths = [image for image, _ in items]
    verify_images(paths, root=tmp_path)
    cached = build_model("yolov5n", num_classes=2).get_classifier()
    check_anchors_(cached, items, labels, imgsz=320, seed=0, image_wh=image_sizes(paths, root=tmp_path))
    assert torch.equal(cached.anchors, head.anchors)


def test_image_sizes_come_from_the_checks_cache_and_follow_changed_files(tmp_path, monkeypatch):
    paths = []
    for i, size in enumerate([(40, 30), (50, 64), (33, 20)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(paths[-1])
    verify_images(paths, root=tmp_path)
    opened = []
    original = verify.inspect
    monkeypatch.setattr(verify, "inspect", lambda p: opened.append(p) or original(p))
    assert image_sizes(paths, root=tmp_path) == [(40, 30), (50, 64), (33, 20)] and opened == []
    Image.fromarray(np.zeros((10, 90, 3), np.uint8)).save(paths[1])          # replaced in place
    cache = verify.cache_file(tmp_path)
    entries = json.loads(cache.read_text())
    entries[str(paths[2])] = entries[str(paths[2])][:2]                       # a cache from before sizes were kept
    cache.write_text(json.dumps(entries))
    assert image_sizes(paths, root=tmp_path) == [(40, 30), (90, 10), (33, 20)] and opened == paths[1:]
    assert image_sizes(paths, root=tmp_path) == [(40, 30), (90, 10), (33, 20)] and len(opened) == 2   # remembered
    assert image_sizes(paths, root=None) == [(40, 30), (90, 10), (33, 20)]   # no cache: the headers


def test_fitting_anchors_are_kept(tmp_path):
    items, labels = thin_boxes(tmp_path)
    labels = [torch.tensor([[0, 0.5, 0.5, 0.1, 0.12]]) for _ in labels]        # 32x29 px boxes at 320
    head = build_model("yolov5n", num_classes=2).get_classifier()
    before = head.anchors.clone()
    assert "the anchors fit, kept" in check_anchors_(head, items, labels, imgsz=320, seed=0)
    assert torch.equal(head.anchors, before)


def test_evolved_anchors_cover_two_clusters():
    rng = np.random.default_rng(1)
    wh = np.concatenate([rng.normal((20, 20), 1, (50, 2)), rng.normal((200, 60), 5, (50, 2))]).astype(np.float32)
    k = evolve_anchors(wh, 2, imgsz=320, generations=50, rng=np.random.default_rng(0))
    assert k[0] == pytest.approx([20, 20], rel=0.2) and k[1] == pytest.approx([200, 60], rel=0.2)
