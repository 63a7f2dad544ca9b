"""Triton kernels of udvd_triton (installed as ``udvd_triton.kernels``)."""
