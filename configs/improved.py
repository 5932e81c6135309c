"""The paper's own future work, on by default here: log-compressed, standardised mel input, a
deeper residual trunk with batch norm, self-attention over windows, sigmoid cross-entropy with
balanced positive weights, and per-tag thresholds tuned on validation. Other improved configs
derive from this one and change the model."""
from configs import default


def get_config():
    config = default.get_config()
    m = config.model
    m.name = "resnet_attention"
    m.compression = "log1p"
    m.normalize = True
    m.conv_channels = (16, 32, 64, 128, 128)   # residual blocks (resnet trunks)
    m.dense_sizes = (256, 128)                  # trunk features, head hidden layer
    m.lstm_size = 128
    m.lstm_initial_state = "zeros"
    m.output_activation = "none"                # logits for the bce loss
    t = config.train
    t.loss = "bce"
    t.pos_weight = "balanced"
    t.learning_rate = 1e-3
    t.num_epochs = 20                           # ~25 s an epoch on the synthetic corpus, 2 CPU cores
    config.eval.tune_thresholds = True
    return config
