"""cart: the reference implementation of CART (Context-Anchored Recurrent Transformer) and the
experiment framework around it.

Public API: the configs, `build_model`, and the accounting functions.
"""
# Before anything imports torch: idle OpenMP threads sleep instead of spinning unless the environment
# says otherwise (shared CPUs; cart/runtime.py says why and how to opt out).
from cart.runtime import apply_omp_default as _apply_omp_default

_apply_omp_default()

from cart.accounting import account, effective_params, forward_flops_per_token, parity, stored_params
from cart.config import CARTConfig, DenseConfig, config_from_dict, config_to_dict, homogeneous_control
from cart.model import build_model

__version__ = "0.1.0"
__all__ = [
    "CARTConfig", "DenseConfig", "build_model", "config_from_dict", "config_to_dict", "homogeneous_control",
    "account", "stored_params", "effective_params", "forward_flops_per_token", "parity",
]
