"""Training: for now a minimal SFT train step (:mod:`dreamjax.train.sft_step`); the full loop (train state,
mesh, checkpoints, metrics) builds on it."""

from dreamjax.train.sft_step import adamw, make_train_step

__all__ = ["adamw", "make_train_step"]
