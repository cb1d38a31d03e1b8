"""Training: the loop (AdamW, warmup + cosine, gradient clipping, periodic evaluation) and
the glue that builds the right model head for a task. Later work moves it onto Hugging
Face accelerate for multi-GPU runs.
"""

from longarena.train.loop import TrainConfig, TrainResult, evaluate, model_for_task, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "model_for_task", "train"]
