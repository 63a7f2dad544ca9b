"""UDVD super-resolution with fused Triton dynamic-filter kernels."""

from udvd_triton.ops import dynamic_filter

__all__ = ["dynamic_filter"]
__version__ = "0.1.0"
