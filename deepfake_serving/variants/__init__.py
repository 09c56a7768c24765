"""Variants: the registry (torch-free), one module per architecture that registers it, their networks
(``nets/``, torch) and the factory. ``create_model`` is loaded on first use, so reading the registry never
imports torch."""

import importlib

from deepfake_serving.variants import dfdc, enhanced, ff, keras_head, mobile  # noqa: F401 - each registers itself
from deepfake_serving.variants.registry import (
    OUTPUT_CONVENTIONS,
    FaceSettings,
    Preprocessing,
    Variant,
    get_variant,
    list_variants,
    register_variant,
    to_array,
)

__all__ = ["OUTPUT_CONVENTIONS", "FaceSettings", "Preprocessing", "Variant", "create_model", "get_variant", "list_variants",
           "register_variant", "to_array"]


def __getattr__(name: str):
    if name == "create_model":
        # by name: a static import would put torch under every reader of the registry
        return importlib.import_module("deepfake_serving.variants.factory").create_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
