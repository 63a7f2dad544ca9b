"""Triton kernels of udvd_triton's dynamic filter (installed as ``udvd_triton.kernels``).

``layout`` (tensor layouts and their checks; no Triton needed), ``tiles`` (shared Triton helpers), ``depthwise``
(CUDA-core kernels), ``depthwise_mma`` (tensor-core kernels), ``full`` (full-mode kernels), ``policy`` (how programs
are sized), ``launch`` (the launchers), ``op`` (the registered, differentiable ``torch.library`` op). Importing this
package imports nothing else: ``udvd_triton.ops`` loads ``op`` only when a CUDA tensor (or ``backend="triton"``)
asks for it.
"""
