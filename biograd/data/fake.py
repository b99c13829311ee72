"""Random images for smoke tests and speed runs: torchvision's FakeData, 3 channels, 10 classes.

Item i of a split is drawn from a generator seeded with i plus the split's fixed offset, so
every run, process and DataLoader worker sees the same images; train and val differ.
fake_size training images, fake_size // 4 validation images, 3 × image_size² (default 32).
"""

from __future__ import annotations

from biograd.data.base import DataBundle, DataError, DataOptions, register

DEFAULT_SIZE = 32
NUM_CLASSES = 10
TRAIN_OFFSET, VAL_OFFSET = 0, 1_000_000_007


@register("fake", order=3)
def build_fake(options: DataOptions) -> DataBundle:
    """FakeData train and val splits, deterministic, normalised to about [-1, 1]."""
    from torchvision import transforms
    from torchvision.datasets import FakeData

    if options.fake_size < 4:
        raise DataError(f"fake_size is {options.fake_size}: give at least 4 (val gets a quarter)")
    size = options.image_size or DEFAULT_SIZE
    transform = transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    train, val = (
        FakeData(n, image_size=(3, size, size), num_classes=NUM_CLASSES, transform=transform,
                 random_offset=offset)
        for n, offset in ((options.fake_size, TRAIN_OFFSET), (options.fake_size // 4, VAL_OFFSET))
    )
    return DataBundle(train, val, num_classes=NUM_CLASSES, in_channels=3, image_size=size,
                      name="fake")
