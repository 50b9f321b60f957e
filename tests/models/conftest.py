"""Fixtures of the model tests: a clean Keras state and a fixed seed for every test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def keras_state():
    """Seed Keras, and restore the float32 policy after the test."""
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")

