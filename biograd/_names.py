"""How every registry (rules, data sets, models) matches a name a user typed: case, and "-"
against "_", do not matter. One rule, so that `--rule sign-fixed`, `--data fashion_mnist` and
`--model resnet-small` all work."""


def name_key(name: str) -> str:
    """The form names are compared in: "Fashion-MNIST" and "fashion_mnist" give the same."""
    return name.strip().lower().replace("-", "_")
