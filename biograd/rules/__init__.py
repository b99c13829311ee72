"""The learning rules, one per file, each registered by name on import.

Adding a rule is adding one file here: the registry feeds the converter, the CLI choices, the
contract tests and the docs table.
"""

import importlib
import pkgutil

from biograd.rules.base import (
    Feedback,
    Rule,
    compared_rules,
    get_rule,
    list_rules,
    register,
    rule_class,
    rules_table,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

# the family a rule can be composed from: Alignment(decay=..., amp=..., noise="normal")
from biograd.rules.alignment import Alignment  # noqa: E402

__all__ = [
    "Alignment", "Feedback", "Rule", "compared_rules", "get_rule", "list_rules", "register",
    "rule_class", "rules_table",
]
