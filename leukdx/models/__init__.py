"""Backbones, fine-tuning strategies and the layers leukdx models are made of.

Importing this package registers leukdx's custom Keras layers, which loading a saved
``.keras`` model needs.

Example:
    >>> from leukdx.config import ModelConfig
    >>> from leukdx.models import build_model, list_backbones
    >>> "alexnet" in list_backbones()
    True
    >>> model = build_model(ModelConfig(backbone="mobilenet_v3_small", weights="none"), 64)
"""

from leukdx.models import layers  # noqa: F401  (registers the custom layers with Keras)
from leukdx.models.backbones import (
    BackboneSpec,
    UnknownBackboneError,
    get_backbone,
    list_backbones,
    register_backbone,
)
from leukdx.models.strategies import (
    backbone_layers,
    build_model,
    get_strategy,
    list_strategies,
    model_backbone,
    register_strategy,
)
from leukdx.models.weights import WeightsUnavailableError, resolve_weights

__all__ = [
    "BackboneSpec",
    "UnknownBackboneError",
    "WeightsUnavailableError",
    "backbone_layers",
    "build_model",
    "get_backbone",
    "get_strategy",
    "list_backbones",
    "list_strategies",
    "model_backbone",
    "register_backbone",
    "register_strategy",
    "resolve_weights",
]
