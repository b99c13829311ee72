"""Datasets. The embedded default is scikit-learn's bundled digits: no download, ever."""

from biograd.data.digits import digits

__all__ = ["digits"]
