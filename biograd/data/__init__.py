"""Data sets: a name or a folder in, train and val splits and their shapes out.

`build_data("digits" | "mnist" | "fashion-mnist" | "fake" | "<folder>")` returns a
DataBundle; problems with the data raise DataError with a one-line message. Each source is
one file here, registered under its name on import. digits (scikit-learn's, bundled) is the
embedded default: no download, ever.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

# after the loop: `digits` is the function, not the submodule of the same name
from biograd.data.base import DataBundle, DataError, list_datasets  # noqa: E402
from biograd.data.build import build_data  # noqa: E402
from biograd.data.digits import digits  # noqa: E402

__all__ = ["DataBundle", "DataError", "build_data", "digits", "list_datasets"]
