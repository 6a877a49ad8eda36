"""The demo's detection data: Fashion-MNIST items pasted on canvases, boxes tight around the visible pixels."""
import numpy as np
from PIL import Image

from utils.data.paste_yolo import make_paste_dataset
from utils.data.yolo import load_detection_datasets, read_labels


def test_pasted_items_are_boxed_tightly_and_the_dataset_loads(tmp_path):
    data_yaml = make_paste_dataset(tmp_path / "d", classes=[7, 9], train=6, val=3, canvas=64, seed=0, noise=0)
    splits = load_detection_datasets(data_yaml, imgsz=64)
    assert splits.classes == ["Sneaker", "Ankle boot"] and len(splits.train) == 6 and len(splits.test) == 3
    for image_path in sorted((tmp_path / "d" / "images" / "train").iterdir()):
        pixels = np.asarray(Image.open(image_path)).astype(int)
        boxes = read_labels(tmp_path / "d" / "labels" / "train" / f"{image_path.stem}.txt", 2)
        assert 1 <= len(boxes) <= 3
        for _, cx, cy, w, h in boxes.tolist():
            x0, y0 = round((cx - w / 2) * 64), round((cy - h / 2) * 64)
            x1, y1 = round((cx + w / 2) * 64), round((cy + h / 2) * 64)
            inside = pixels[y0:y1, x0:x1].max(-1)
            assert inside.max() > 60                                  # the item is there (on a black canvas)
            assert inside[0].max() > 8 and inside[-1].max() > 8       # tight: item pixels on every edge of the box
            assert inside[:, 0].max() > 8 and inside[:, -1].max() > 8
    again = make_paste_dataset(tmp_path / "d", classes=[7, 9], train=6, val=3, canvas=64, seed=0, noise=0)
    assert again == data_yaml                                     # same settings: kept as it is
