import numpy as np
import torch

from utils.data import load_datasets
from utils.data.layouts.shapes import CLASSES, make_shapes


def test_shapes_dataset_is_deterministic_balanced_and_three_channel():
    data = load_datasets("shapes", None, image_size=28, augment=False)
    assert data.num_classes == len(CLASSES) == 8
    assert len(data.train) == 1600 and len(data.test) == 800
    x, y = data.test[0]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and y == 0
    assert np.bincount(data.test.samples.labels).tolist() == [100] * 8
    a = make_shapes(size=16, train_per_class=3, test_per_class=2)
    b = make_shapes.__wrapped__(size=16, train_per_class=3, test_per_class=2)   # drawn again, not the cached copy
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images[0], a.train.images[1])  # images vary within a class
