"""One rule for every registry's names: case, and "-" against "_", do not matter."""

import pytest

import biograd
from biograd.data import build_data
from biograd.data.base import get_source
from biograd.models import build_model


@pytest.mark.parametrize("typed", ["sign-fixed", "Sign_Fixed", "SIGN-FIXED"])
def test_rule_names(typed):
    assert biograd.get_rule(typed).name == "sign_fixed"


@pytest.mark.parametrize("typed", ["fashion_mnist", "Fashion-MNIST", "fashion-mnist"])
def test_data_set_names(typed):
    assert get_source(typed) is get_source("fashion-mnist") is not None


def test_data_set_names_build():
    assert build_data("DIGITS").name == build_data("digits").name


@pytest.mark.parametrize(("typed", "cls"), [("resnet-small", "SmallResNet"),
                                            ("Small-CNN", "Sequential"),
                                            ("ResNet18", "ResNet")])
def test_model_names(typed, cls):
    model = build_model(typed, num_classes=10, in_channels=3, image_size=32)
    assert type(model).__name__ == cls
