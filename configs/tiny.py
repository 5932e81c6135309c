"""A CPU-tiny config for tests: a few short synthetic tracks, small frontend and model."""
from configs import default


def get_config():
    config = default.get_config()
    d = config.data
    d.sample_rate, d.n_fft, d.hop_length, d.n_mels = 8000, 512, 256, 32
    d.window_frames, d.window_hop = 32, 16
    d.split_fractions = (0.6, 0.2, 0.2)
    d.synthetic.update(num_tracks=10, min_seconds=6.0, max_seconds=12.0, sample_rate=11025)
    m = config.model
    m.conv_channels = (4, 4, 8, 8)
    m.dense_sizes = (32, 24, 16)
    m.lstm_size = 12
    t = config.train
    t.num_epochs = 2
    t.learning_rate = 1e-3
    t.length_buckets = (8, 16, 32)
    t.log_every_tracks = 4
    t.checkpoint_every_steps = 4
    return config
