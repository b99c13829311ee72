"""scikit-learn's bundled handwritten digits: 1,797 images of 8×8 pixels, 10 classes.

Shipped inside scikit-learn, so it works offline on a fresh clone; the project's embedded
default data set. `digits(train)` gives the raw [0, 1] split (the demo uses it); the
registered source `digits` normalises it by the training split's mean and std.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from biograd.data.base import DataBundle, DataOptions, register
from biograd.data.tensors import image_tensors

MEAN, STD = 0.3054, 0.3761  # of the training split's pixels, in [0, 1]


def digits(train: bool, test_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """The train or test split of digits as (N, 1, 8, 8) float images in [0, 1] and labels.

    The split is a fixed stratified shuffle (seed 0 by default), the same on every machine.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_fraction, random_state=seed,
        stratify=labels.numpy(),
    )
    idx = torch.as_tensor(train_idx if train else test_idx)
    return TensorDataset(images[idx], labels[idx])


@register("digits", order=0)
def build_digits(options: DataOptions) -> DataBundle:
    """digits, normalised; 1 × 8 × 8 (or image_size²), 10 classes; the test split as val."""
    splits = [digits(train).tensors for train in (True, False)]
    train, val = (image_tensors(x, y, MEAN, STD, options.image_size) for x, y in splits)
    return DataBundle(train, val, num_classes=10, in_channels=1,
                      image_size=options.image_size or 8, name="digits")
