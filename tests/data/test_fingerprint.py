"""Splits named by content: an image replaced, added or removed in place, or other pixels, change the fingerprint."""
import os

from tests.data.test_datasets import make_folders, write_image
from tests.detection.conftest import make_yolo_tree
from utils.data import content_fingerprint, load_datasets, load_detection_datasets


def fingerprints(root):
    splits = load_datasets("imagefolder", root, image_size=16, verify=False)
    return content_fingerprint(splits.train), content_fingerprint(splits.test)


def test_an_image_folder_changed_in_place_changes_the_fingerprint(tmp_path):
    make_folders(tmp_path)
    train, test = fingerprints(tmp_path)
    assert len(train) == 64 and train != test and fingerprints(tmp_path) == (train, test)
    image = tmp_path / "train" / "cat" / "cat_0.jpg"
    write_image(image, size=(30, 20), seed=7)                       # replaced
    changed = fingerprints(tmp_path)
    assert changed[0] != train and changed[1] == test
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # rewritten (same size, new time)
    assert fingerprints(tmp_path)[0] != changed[0]
    write_image(tmp_path / "test" / "dog" / "dog_2.png", seed=3)      # added
    assert fingerprints(tmp_path)[1] != test


def test_in_memory_splits_hash_their_pixels_and_labels():
    a = load_datasets("synthetic", None, image_size=16)
    b = load_datasets("synthetic", None, image_size=16)
    assert content_fingerprint(a.train) == content_fingerprint(b.train) != content_fingerprint(a.test)
    b.train.samples.labels[0] = (b.train.samples.labels[0] + 1) % 4
    assert content_fingerprint(b.train) != content_fingerprint(a.train)
    b.train.samples.labels[0] = a.train.samples.labels[0]
    b.train.samples.images[0, 0, 0, 0] ^= 1
    assert content_fingerprint(b.train) != content_fingerprint(a.train)


def test_yolo_labels_are_part_of_the_fingerprint(tmp_path):
    data_yaml = make_yolo_tree(tmp_path / "d")
    before = content_fingerprint(load_detection_datasets(data_yaml, imgsz=32).train)
    label = tmp_path / "d" / "labels" / "train" / "train_0.txt"
    label.write_text(label.read_text().replace("0 ", "1 ", 1) if label.read_text().startswith("0 ")
                     else label.read_text().replace("1 ", "0 ", 1))
    assert content_fingerprint(load_detection_datasets(data_yaml, imgsz=32).train) != before
