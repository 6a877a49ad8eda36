"""Per-sample seeded augmentation: the same seed gives the same batches with any number of loader workers."""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.data.seeded import SampleSeeded
from utils.seed import seed_epoch


class RandomlyAugmented(Dataset):
    """Each sample draws from torch, NumPy and Python's random, as transforms do."""

    classes = ["a", "b"]

    def __len__(self):
        return 24

    def __getitem__(self, index):
        return torch.tensor([index, float(torch.rand(())), np.random.rand(), random.random()])


def epoch_batches(workers: int, epoch: int, seed: int = 5) -> torch.Tensor:
    loader = DataLoader(SampleSeeded(RandomlyAugmented()), batch_size=5, shuffle=True,
                        generator=torch.Generator(), num_workers=workers)
    seed_epoch(seed, epoch, loader)
    return torch.cat(list(loader))


def test_batches_do_not_depend_on_the_worker_count():
    main = epoch_batches(0, epoch=3)
    assert torch.equal(main, epoch_batches(2, epoch=3))
    assert torch.equal(main, epoch_batches(1, epoch=3))
    assert sorted(main[:, 0].tolist()) == list(range(24))          # every sample once, shuffled
    assert not torch.equal(main, epoch_batches(0, epoch=4))         # another epoch, other draws
    assert not torch.equal(main, epoch_batches(0, epoch=3, seed=6))


def test_a_sample_draws_the_same_whatever_its_place_in_the_epoch():
    by_index = {int(row[0]): row for row in epoch_batches(0, epoch=1, seed=5)}
    loader = DataLoader(SampleSeeded(RandomlyAugmented()), batch_size=24, shuffle=False, generator=torch.Generator())
    seed_epoch(5, 1, loader)
    for row in next(iter(loader)):
        assert torch.equal(row, by_index[int(row[0])])


def test_the_main_process_generators_are_left_as_they_were():
    """torch's and Python's (NumPy's is left seeded by the last sample: nothing in training draws from it)."""
    data = SampleSeeded(RandomlyAugmented(), epoch_key=11)
    torch.manual_seed(0), random.seed(0)
    want = torch.rand(3), random.random()
    torch.manual_seed(0), random.seed(0)
    data[4], data[7]
    got = torch.rand(3), random.random()
    assert torch.equal(got[0], want[0]) and got[1] == want[1]


def test_attributes_reach_the_wrapped_dataset_and_it_pickles():
    import pickle
    data = SampleSeeded(RandomlyAugmented(), epoch_key=2)
    assert data.classes == ["a", "b"] and len(data) == 24
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[3], data[3])


class BatchAugmented(RandomlyAugmented):
    """Fetches whole batches (as the YOLO dataset does: one draw over the batch after per-image ones)."""

    def __getitems__(self, indices):
        shared = float(torch.rand(()))
        return [torch.cat([self[i], torch.tensor([shared])]) for i in indices]


def test_a_dataset_fetching_batches_is_seeded_per_batch_whatever_the_workers():
    def batches(workers):
        loader = DataLoader(SampleSeeded(BatchAugmented()), batch_size=5, shuffle=True, generator=torch.Generator(),
                            num_workers=workers)
        seed_epoch(5, 2, loader)
        return torch.cat(list(loader))

    main = batches(0)
    assert torch.equal(main, batches(2))
    assert main[:5, -1].unique().numel() == 1 and main[:, -1].unique().numel() == 5     # one draw per batch
