"""Training: contrastive (CLIP, SigLIP, MAKE multi-view) with optional masked latent modelling.

``dermfm train RECIPE`` or ``torchrun --nproc-per-node N -m dermfm.train RECIPE``.
"""

from dermfm.train.config import TrainConfig, load_config, load_stages
from dermfm.train.engine import (
    EpochSampler,
    Trainer,
    TrainStep,
    sampling_weights,
    train,
    train_recipe,
    validation_metrics,
)
from dermfm.train.model import Trainable, build_trainable

__all__ = [
    "EpochSampler",
    "TrainConfig",
    "TrainStep",
    "Trainable",
    "Trainer",
    "build_trainable",
    "load_config",
    "load_stages",
    "sampling_weights",
    "train",
    "train_recipe",
    "validation_metrics",
]
