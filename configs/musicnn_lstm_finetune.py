"""musicnn_lstm with the musicnn trunk fine-tuned: its weights train too, at a learning rate a
hundred times smaller than the head's (optax.multi_transform), its batch-norm statistics frozen
(they stay the published ones), and so are the input batch norm's scale and shift (one each, for the
whole log-mel: their gradient would need the front-end convs' input gradient, ~6x the cost of all
the rest of the backward pass on a CPU)."""
from configs import musicnn_lstm


def get_config():
    config = musicnn_lstm.get_config()
    config.model.freeze_trunk = False
    config.train.trunk_learning_rate = 1e-5
    return config
