"""Training on Hugging Face accelerate: AdamW with warmup + cosine, gradient clipping and
accumulation, fp32 or bf16 autocast, one device or several (``accelerate launch``), run
folders with JSONL metrics and exact-resume checkpoints, config files and LRA presets.
"""

from longarena.train.objective import TrainConfig, TrainResult, evaluate, model_for_task
from longarena.train.trainer import fit, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "fit", "model_for_task", "train"]
