"""Training: the loop (`loop.train_and_evaluate`), the state and jitted steps, losses,
checkpoints, data parallelism over devices and hosts, and preemption.

Submodules are imported on use: the tagger reads checkpoints without importing the training loop
(and its TensorFlow data pipeline)."""


def __getattr__(name):
    if name == "train_and_evaluate":
        from jaxtag.training.loop import train_and_evaluate
        return train_and_evaluate
    raise AttributeError(f"module 'jaxtag.training' has no attribute {name!r}")
