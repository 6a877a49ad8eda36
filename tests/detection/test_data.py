"""YOLO-format data: data.yaml forms, label paths, one-line errors for bad labels, letterbox geometry."""
import re

import pytest
import torch
import yaml

from tests.detection.conftest import COLOURS, make_yolo_tree
from utils.data.yolo import YoloDataset, collate, label_path, letterbox, load_yolo_data, read_labels, yolo_datasets
from utils.errors import UserError


def test_a_data_yaml_with_folders_or_a_list_file_and_names_as_a_mapping(tmp_path):
    data_yaml = make_yolo_tree(tmp_path / "d", names_as_mapping=True)
    data = load_yolo_data(data_yaml)
    assert data.names == ["class0", "class1"] and len(data.splits["train"]) == 8
    listing = tmp_path / "d" / "train.txt"
    listing.write_text("\n".join(f"images/train/train_{i}.jpg" for i in range(3)) + "\n")
    raw = yaml.safe_load(data_yaml.read_text())
    data_yaml.write_text(yaml.safe_dump({**raw, "train": "train.txt"}))
    assert len(load_yolo_data(data_yaml).splits["train"]) == 3


def test_label_paths_follow_yolov5s_rule(tmp_path):
    assert label_path(tmp_path / "images" / "a" / "images" / "train" / "x.jpg") == \
        tmp_path / "images" / "a" / "labels" / "train" / "x.txt"


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "expected 'class cx cy w h' (5 fields), got 4"),
    ("2 0.5 0.5 0.2 0.2", "class 2 is not one of 0..1"),
    ("0 0.5 1.5 0.2 0.2", "outside [0, 1]"),
    ("0 0.5 0.5 0 0.2", "width and height must be > 0"),
    ("a 0.5 0.5 0.2 0.2", "not numbers"),
])
def test_a_malformed_label_line_is_named_by_file_and_line(tmp_path, line, message):
    label = tmp_path / "x.txt"
    label.write_text("1 0.5 0.5 0.1 0.1\n" + line + "\n")
    with pytest.raises(UserError, match=re.escape(message)) as info:
        read_labels(label, 2)
    assert str(info.value).startswith(f"{label}:2: ")


@pytest.mark.parametrize("change, message", [
    ({"nc": 3}, "nc is 3 but 'names' lists 2 classes"),
    ({"val": None}, "key 'val' is missing"),
    ({"train": "nowhere"}, "is neither a folder nor a .txt list"),
    ({"names": {1: "a", 2: "b"}, "nc": 2}, "needs the keys 0..1"),
    ({"nc": "two"}, "nc must be an integer (the number of classes), got 'two'"),
    ({"nc": True}, "nc must be an integer"),
    ({"nc": 0, "names": []}, "nc is 0; a dataset needs at least one class"),
    ({"nc": None, "names": []}, "'names' must be a non-empty list"),
])
def test_a_bad_data_yaml_is_one_line(tmp_path, change, message):
    data_yaml = make_yolo_tree(tmp_path / "d")
    data_yaml.write_text(yaml.safe_dump({**yaml.safe_load(data_yaml.read_text()), **change}))
    with pytest.raises(UserError, match=re.escape(message)):
        load_yolo_data(data_yaml)


def test_letterboxed_boxes_land_on_their_objects(yolo_tree):
    data = load_yolo_data(yolo_tree)
    _, val = yolo_datasets(data, imgsz=96)
    for index in range(len(val) - 1):
        image, boxes = val[index]
        assert image.shape == (3, 96, 96) and boxes.shape[1] == 5
        rows = boxes.tolist()
        for k, (cls, cx, cy, w, h) in enumerate(rows):
            covered = any(abs(cx - x) < bw / 2 and abs(cy - y) < bh / 2 for _, x, y, bw, bh in rows[k + 1:])
            if covered:                          # a box drawn later paints over this centre
                continue
            inside = image[:, int(cy * 96), int(cx * 96)] * 255
            assert torch.allclose(inside, torch.tensor(COLOURS[int(cls)], dtype=torch.float32), atol=40)
    image, boxes = val[len(val) - 1]
    assert boxes.shape == (0, 5)                        # a background image
    assert float(image[:, 0, 0].mean()) == pytest.approx(114 / 255, abs=1e-6)   # letterbox padding (80x64 -> 96)


def test_training_samples_are_augmented_deterministically_and_collated(yolo_tree):
    data = load_yolo_data(yolo_tree)
    train = YoloDataset(data.splits["train"], num_classes=2, imgsz=64, augment=True)
    torch.manual_seed(0)
    a = train[0]
    torch.manual_seed(0)
    b = train[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    images, targets = collate([train[0], train[1]])
    assert images.shape == (2, 3, 64, 64) and targets.shape[1] == 6 and set(targets[:, 0].tolist()) <= {0.0, 1.0}
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()


def test_letterbox_keeps_the_aspect_ratio():
    image, ratio, (left, top) = letterbox(torch.rand(3, 40, 80), 64)
    assert ratio == 0.8 and (left, top) == (0, 16) and image.shape == (3, 64, 64)


def test_hsv_jitter_is_yolov5s_gains_in_hsv_space():
    import colorsys

    from utils.data.yolo_augment import hsv_jitter, hsv_to_rgb, rgb_to_hsv

    images = torch.rand(3, 3, 5, 7)
    images[0, :, 0, :] = 0.4                                          # grey pixels: no hue
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    expected = torch.tensor([colorsys.rgb_to_hsv(*p) for p in pixels])
    assert torch.allclose(rgb_to_hsv(images).permute(0, 2, 3, 1).reshape(-1, 3), expected, atol=1e-6)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-6)
    assert torch.allclose(hsv_jitter(images, 0, 0, 0), images, atol=1e-6)           # unit gains change nothing
    torch.manual_seed(0)
    out = hsv_jitter(images)
    torch.manual_seed(0)
    gains = torch.empty(3, 3).uniform_(-1, 1) * torch.tensor([0.015, 0.7, 0.4]) + 1
    for n in range(3):
        h, s, v = colorsys.rgb_to_hsv(*images[n, :, 2, 3].tolist())
        gh, gs, gv = gains[n].tolist()
        want = colorsys.hsv_to_rgb((h * gh) % 1, min(s * gs, 1), min(v * gv, 1))
        assert torch.allclose(out[n, :, 2, 3], torch.tensor(want), atol=1e-5)


def test_a_batch_flips_boxes_with_their_images(yolo_tree, monkeypatch):
    """Colours kept (no HSV jitter): every box of an augmented batch still sits on its object's colour."""
    import utils.data.yolo as yolo

    monkeypatch.setattr(yolo, "hsv_jitter", lambda images: images)
    data = load_yolo_data(yolo_tree)
    train = YoloDataset(data.splits["train"], num_classes=2, imgsz=64, augment=True)
    checked = 0
    for seed in range(4):
        torch.manual_seed(seed)
        for image, boxes in train.__getitems__(list(range(len(train)))):
            rows = boxes.tolist()
            for k, (cls, cx, cy, w, h) in enumerate(rows):
                if any(abs(cx - x) < bw / 2 and abs(cy - y) < bh / 2 for _, x, y, bw, bh in rows[k + 1:]):
                    continue                    # a box drawn later paints over this centre
                inside = image[:, min(int(cy * 64), 63), min(int(cx * 64), 63)] * 255
                assert torch.allclose(inside, torch.tensor(COLOURS[int(cls)], dtype=torch.float32), atol=50)
                checked += 1
    assert checked > 20


def test_a_data_yaml_without_names_says_how_its_classes_are_named(tmp_path, caplog):
    data_yaml = make_yolo_tree(tmp_path / "d")
    raw = yaml.safe_load(data_yaml.read_text())
    del raw["names"]
    data_yaml.write_text(yaml.safe_dump(raw))
    with caplog.at_level("WARNING"):
        assert load_yolo_data(data_yaml).names == ["0", "1"]
    assert [r for r in caplog.records if "no 'names' key" in r.message and "'0'..'1'" in r.message]


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("how", ["no labels folder", "empty label files"])
def test_a_split_without_any_box_is_refused_before_training(tmp_path, split, how):
    data_yaml = make_yolo_tree(tmp_path / "d")
    for label in sorted((tmp_path / "d" / "labels" / split).iterdir()):
        if how == "no labels folder":
            label.unlink()
        else:
            label.write_text("")
    if how == "no labels folder":
        (tmp_path / "d" / "labels" / split).rmdir()
    with pytest.raises(UserError, match=f"no image of split '{split}' has a box") as info:
        yolo_datasets(load_yolo_data(data_yaml), imgsz=32)
    assert ("no label file exists" if how == "no labels folder" else "every label file is empty") in str(info.value)
    assert f"labels/{split}/{split}_0.txt" in str(info.value)
