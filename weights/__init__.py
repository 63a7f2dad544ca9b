"""Data installed with udvd_triton: registry manifest, bundled checkpoints, kernel-PCA basis."""
