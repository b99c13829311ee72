"""Small models sized for tiny inputs."""

from biograd.models.small import small_cnn

__all__ = ["small_cnn"]
