"""The demo's detection data: Fashion-MNIST items pasted on canvases, boxes tight around the visible pixels."""
import numpy as np
import pytest
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


def test_other_settings_replace_the_data_whole_and_change_the_study_keys(tmp_path):
    """Regenerating into the same folder leaves no image of the old settings, and the data.yaml's text (which the
    study keys hash) changes with the settings."""
    from utils.studies.cells import dataset_file_hash

    first = make_paste_dataset(tmp_path / "d", classes=[7, 9], train=6, val=3, canvas=64, seed=0, noise=0)
    key = dataset_file_hash(str(first))
    second = make_paste_dataset(tmp_path / "d", classes=[7, 9], train=4, val=2, canvas=48, seed=0, noise=0)
    assert second == first and dataset_file_hash(str(second)) != key
    assert len(list((tmp_path / "d" / "images" / "train").iterdir())) == 4
    assert len(list((tmp_path / "d" / "labels" / "val").iterdir())) == 2
    assert all(Image.open(p).size == (48, 48) for p in (tmp_path / "d" / "images" / "train").iterdir())
    assert dataset_file_hash(str(tmp_path / "d")) == {} and dataset_file_hash(None) == {}


def test_a_yolo_folder_is_read_through_its_data_yaml(tmp_path):
    """Issue 27 item 12: the folder given instead of its data.yaml."""
    from utils.data.yolo import load_yolo_data
    from utils.errors import UserError

    data_yaml = make_paste_dataset(tmp_path / "d", classes=[7, 9], train=6, val=3, canvas=64, seed=0, noise=0)
    assert load_yolo_data(data_yaml.parent).source == data_yaml
    (data_yaml.parent / "other.yaml").write_text("nc: 1\n")
    data_yaml.rename(data_yaml.parent / "mine.yaml")
    with pytest.raises(UserError, match="several YAML files .*mine.yaml, other.yaml"):
        load_yolo_data(data_yaml.parent)
    with pytest.raises(UserError, match="without a data.yaml; give DIR/data.yaml"):
        load_yolo_data(tmp_path)
