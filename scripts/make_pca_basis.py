"""Write weights/kernel_pca.npy: the (15, 225) float64 kernel-PCA basis of udvd_triton.degradation.

    python scripts/make_pca_basis.py [--out weights/kernel_pca.npy] [--n-kernels 20000] [--seed 0]

The basis is deterministic (compute_pca_basis with a fixed seed); tests compare the stored file with a fresh
recomputation, so rerun this script whenever the kernel distribution or the defaults change.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from udvd_triton.files import atomic_output
from udvd_triton.degradation import PCA_FILE, PCA_N_KERNELS, PCA_SIGMA_RANGE, compute_pca_basis, random_kernels


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=repo / "weights" / PCA_FILE)
    parser.add_argument("--n-kernels", type=int, default=PCA_N_KERNELS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    basis = compute_pca_basis(args.n_kernels, args.seed)
    with atomic_output(args.out) as tmp:
        np.save(tmp, basis)

    # How well the basis represents a fresh sample of the same distribution (another seed).
    g = torch.Generator().manual_seed(args.seed + 1)
    for aniso in (False, True):
        ks = random_kernels(2000, PCA_SIGMA_RANGE, anisotropic=aniso, generator=g, dtype=torch.float64)
        ks = ks.reshape(2000, -1).numpy()
        err = np.linalg.norm(ks - (ks @ basis.T) @ basis, axis=1) / np.linalg.norm(ks, axis=1)
        kind = "anisotropic" if aniso else "isotropic"
        print(f"{kind}, widths {PCA_SIGMA_RANGE}: relative L2 reconstruction error over 2000 fresh kernels: "
              f"median {np.median(err):.2e}, 99% {np.quantile(err, 0.99):.2e}, max {err.max():.2e}")
    print(f"wrote {args.out} {basis.shape} {basis.dtype}")


if __name__ == "__main__":
    main()
