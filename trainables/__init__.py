"""Ray adapters around the training engine: a Train per-worker loop and a Tune driver."""

from trainables.driver import tune_driver
from trainables.train_loop import train_loop_per_worker

__all__ = ["train_loop_per_worker", "tune_driver"]
