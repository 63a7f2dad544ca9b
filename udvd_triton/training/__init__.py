"""Training pipeline: offline data preparation (``data``), online degradation synthesis (``synth``), the training
loop (``trainer``), evaluation over a degradation grid (``evaluate``) and the ``udvd`` commands (``cli``)."""

from udvd_triton.training.data import BatchSampler, CropDataset, prepare_data
from udvd_triton.training.evaluate import evaluate
from udvd_triton.training.synth import SynthConfig, synthesize
from udvd_triton.training.trainer import TrainConfig, resume, train

__all__ = ["BatchSampler", "CropDataset", "SynthConfig", "TrainConfig", "evaluate", "prepare_data", "resume", "synthesize", "train"]
