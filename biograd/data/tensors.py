"""In-memory image data sets (digits, MNIST, Fashion-MNIST): normalised once, indexed fast.

The images are normalised (and resized, when asked) once, up front, into a float
TensorDataset. When the resized split would take more than `IN_MEMORY_LIMIT` bytes (MNIST's
60,000 training images at 224 × 224 would take 12 GB), each item is resized and normalised
as it is read instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

IN_MEMORY_LIMIT = 1 << 30  # bytes of float32 images per split
_CHUNK = 4096  # images resized at a time, to bound the peak memory of the up-front pass


class ImageTensors(TensorDataset):
    """A TensorDataset of (N, C, H, W) float images and (N,) labels; items are (image, int)."""

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        images, labels = self.tensors
        return images[index], int(labels[index])


class ResizedImageTensors(Dataset):
    """Raw images kept as they are, each resized and normalised when it is read."""

    def __init__(self, images: Tensor, labels: Tensor, mean: float, std: float,
                 size: int) -> None:
        self.images, self.labels = images, labels  # (N, C, h, w) uint8 or float; (N,)
        self.mean, self.std, self.size = mean, std, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = _prepare(self.images[index : index + 1], self.mean, self.std, self.size)
        return image[0], int(self.labels[index])


def _prepare(images: Tensor, mean: float, std: float, size: int | None) -> Tensor:
    """(n, C, h, w) uint8 (0..255) or float (0..1) -> (n, C, size, size) normalised float."""
    x = images.to(torch.float32, copy=True)  # never normalise the caller's tensor in place
    if images.dtype == torch.uint8:
        x = x.div_(255.0)
    if size is not None and x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x.sub_(mean).div_(std)


def image_tensors(images: Tensor, labels: Tensor, mean: float, std: float,
                  size: int | None = None) -> Dataset:
    """A data set of `images` (N, C, h, w), uint8 or float in [0, 1], normalised by mean/std.

    Items are ((C, size, size) float, int label); size None keeps (h, w).
    """
    n, c, h, w = images.shape
    out_h, out_w = (size, size) if size is not None else (h, w)
    labels = labels.long()
    if n * c * out_h * out_w * 4 > IN_MEMORY_LIMIT:
        return ResizedImageTensors(images, labels, mean, std, out_h)
    chunks = [_prepare(images[i : i + _CHUNK], mean, std, size) for i in range(0, n, _CHUNK)]
    prepared = torch.cat(chunks) if chunks else torch.empty(0, c, out_h, out_w)
    return ImageTensors(prepared, labels)
