"""Model family: CART (`cart.py`), the dense baseline and homogeneous control (`dense.py`), and
their parts (layers, attention, recurrence, cache, diagnostics)."""
from __future__ import annotations

from torch import nn

from cart.config import CARTConfig, DenseConfig, ModelConfig
from cart.model.cache import DecodeCache
from cart.model.cart import CART
from cart.model.dense import Dense


def build_model(config: ModelConfig) -> nn.Module:
    if isinstance(config, CARTConfig):
        return CART(config)
    if isinstance(config, DenseConfig):
        return Dense(config)
    raise TypeError(f"build_model expects a CARTConfig or DenseConfig, got {type(config).__name__}")


__all__ = ["CART", "Dense", "DecodeCache", "build_model"]
