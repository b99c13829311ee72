"""scikit-learn's bundled handwritten digits: 1,797 images of 8×8 pixels, 10 classes.

Shipped inside scikit-learn, so it works offline on a fresh clone; the project's embedded
default data set.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


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
