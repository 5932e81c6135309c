"""musicnn_lstm with the musicnn trunk fine-tuned: its weights train too, at a learning rate a
hundred times smaller than the head's (optax.multi_transform), its batch-norm statistics frozen
(they stay the published ones)."""
from configs import musicnn_lstm


def get_config():
    config = musicnn_lstm.get_config()
    config.model.freeze_trunk = False
    config.train.trunk_learning_rate = 1e-5
    return config
