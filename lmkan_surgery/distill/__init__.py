"""Recovery training (distill a converted student from its teacher) and from-scratch lmKAN training."""

from .config import DistillConfig, DistillResult, EpochRecord, TrainConfig
from .engine import distill, train_lmkan
from .evaluation import evaluate
from .runtime import AugmentedTensors

__all__ = ["AugmentedTensors", "DistillConfig", "DistillResult", "EpochRecord", "TrainConfig", "distill", "evaluate",
           "train_lmkan"]
