"""UDVD super-resolution with fused Triton dynamic-filter kernels."""

from udvd_triton.model import UDVD, convert_reference_state_dict, multistage_l1_loss
from udvd_triton.ops import dynamic_filter
from udvd_triton.zoo import list_models

__all__ = ["UDVD", "convert_reference_state_dict", "dynamic_filter", "list_models", "multistage_l1_loss"]
__version__ = "0.1.0"
