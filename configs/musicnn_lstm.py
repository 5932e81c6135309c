"""Transfer from real music: musicnn's published network (trained on the Million Song Dataset),
frozen, as the window trunk, under the paper's dense layers and LSTM over a track's windows.

The trunk brings its own frontend (16 kHz, n_fft 512, hop 256, 96 mels, windows of 187 frames =
3 s, hop half a window as the paper's), so this config prepares its own data beside the paper's.
Log-compression happens inside the trunk (musicnn's log10(1 + 10^4 mel), in float32). The input,
loss and thresholds are the improved ones (see improved.py)."""
from configs import default, improved
from jaxtag.models.musicnn import MUSICNN_FRONTEND


def get_config():
    config = improved.get_config()
    d = config.data
    d.sample_rate, d.n_fft, d.hop_length, d.n_mels = (MUSICNN_FRONTEND.sample_rate, MUSICNN_FRONTEND.n_fft,
                                                      MUSICNN_FRONTEND.hop_length, MUSICNN_FRONTEND.n_mels)
    d.window_frames, d.window_hop = MUSICNN_FRONTEND.window_frames, MUSICNN_FRONTEND.window_frames // 2
    m = config.model
    m.name = "musicnn_lstm"
    m.pretrained = "musicnn-msd"
    m.freeze_trunk = True
    m.compression, m.normalize = "none", False   # musicnn compresses its own input
    m.dense_sizes = (256, 128)                   # dense on musicnn's 200-d features, then the head
    m.lstm_size = 128
    config.train.learning_rate = 1e-3
    config.train.num_epochs = default.get_config().train.num_epochs
    return config
