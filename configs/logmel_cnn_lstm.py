"""The paper's CNN+LSTM with only the input and loss fixed: log-mel, standardised per mel bin,
sigmoid cross-entropy, tuned thresholds (see improved.py)."""
from configs import default, improved


def get_config():
    config = improved.get_config()
    paper = default.get_config().model
    m = config.model
    m.name = "cnn_lstm"
    m.conv_channels, m.dense_sizes, m.lstm_size = paper.conv_channels, paper.dense_sizes, paper.lstm_size
    config.train.learning_rate = 1e-4
    config.train.num_epochs = default.get_config().train.num_epochs  # the same budget as the paper configs
    return config
