"""Training: the loop (`loop.train_and_evaluate`), the state and jitted steps, losses,
checkpoints, data parallelism over devices and hosts, and preemption. Import the module you need
(the tagger reads checkpoints without the training loop and its TensorFlow data pipeline)."""
