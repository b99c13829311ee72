"""A small Vision Transformer for small images: torchvision's VisionTransformer, sized down.

vit_small: patches of `patch` pixels (the image side must be a multiple), `depth` encoder
layers of width `width` with `heads` heads and an MLP of 2·width, a class token, learned
position embeddings; torchvision's own classes throughout, so `biograd.convert` puts its
attention (biograd.nn.MultiheadAttention) and MLPs on the rule, and its report lists only
LayerNorms, the class token and the position embedding as learning through weight transport.
For 28×28 Fashion-MNIST with the defaults: 16 patches of 7×7, 4 layers of width 64, 0.14 M
weights. Gray images: the patch embedding takes `in_channels` channels itself.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from biograd.models.registry import register_model


@register_model(inputs=((1, 28), (3, 28)), min_size=7)
def vit_small(num_classes: int = 10, in_channels: int = 3, *, image_size: int = 28,
              patch: int = 7, depth: int = 4, width: int = 64, heads: int = 4) -> nn.Module:
    """(N, in_channels, S, S) -> (N, num_classes), S = image_size, a multiple of `patch`.

    The classifier starts at N(0, 0.02²), not torchvision's zeros: a B derived from a zero W
    (ss, frsf, brsf, wm) would send no error back at the first step.
    """
    if image_size % patch:
        fits = [p for p in range(2, min(image_size, 16) + 1) if image_size % p == 0]
        raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}: give "
                         f"--model-options '{{patch: P}}' with P dividing it "
                         f"({', '.join(map(str, fits)) or 'none up to 16'}), or another "
                         f"--image-size")
    model = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=depth,
                              num_heads=heads, hidden_dim=width, mlp_dim=2 * width,
                              num_classes=num_classes)
    if in_channels != 3:
        old = model.conv_proj
        model.conv_proj = nn.Conv2d(in_channels, width, patch, stride=patch)
        nn.init.trunc_normal_(model.conv_proj.weight, std=(1.0 / (in_channels * patch**2)) ** 0.5)
        nn.init.zeros_(model.conv_proj.bias)
        del old
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model
