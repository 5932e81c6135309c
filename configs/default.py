"""Every setting of jaxtag, with the paper's values (Shan, "From music to semantics").

Other configs derive from this one and change only what they name.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # ---- Data (paper sections 2-3). ----
    data = config.data = ml_collections.ConfigDict()
    # CAL500exp directory. Empty: the built-in synthetic corpus (generated on first use).
    data.root = ""
    data.audio_dir = "CAL500_32kps"     # <root>/<audio_dir>/<track>.mp3 (or .wav/.flac/.ogg)
    data.label_set = "hard"            # "hard" -> SegLabelHard, "soft" -> SegLabelSoft
    data.label_dir = ""                # override the label folder; empty: derived from label_set
    data.tags = "emotion"              # "emotion" (18), "all" (67), a category, or "tag1,tag2"
    data.skip_bad_tracks = False       # skip (and report) tracks whose audio or CSV is missing or bad
    data.data_dir = ""                 # where prepared data goes; empty: $JAXTAG_DATA_DIR or ~/jaxtag_data
    # Frontend (paper 3.1): librosa power mel spectrogram.
    data.sample_rate = 20500
    data.n_fft = 2048
    data.hop_length = 1024
    data.n_mels = 128
    # Frame labels (paper 3.2): frames outside every annotated segment are
    # "ignore": masked out of loss and metrics, or "negative": all tags 0 (literal reading).
    data.unannotated = "ignore"
    # Long-term windows (paper 3.3).
    data.window_frames = 128
    data.window_hop = 64
    # Split (paper 3.4): 400/50/50 of 500 tracks == 80/10/10.
    data.split_seed = 0
    data.split_fractions = (0.8, 0.1, 0.1)
    # The synthetic corpus used when root is empty.
    syn = data.synthetic = ml_collections.ConfigDict()
    syn.num_tracks = 60
    syn.seed = 0
    syn.min_seconds = 24.0
    syn.max_seconds = 40.0
    syn.sample_rate = 22050            # != data.sample_rate, so resampling is always exercised

    # ---- Model (paper 4). ----
    model = config.model = ml_collections.ConfigDict()
    model.name = "cnn_lstm"            # see jaxtag.models.MODELS
    model.conv_channels = (20, 40, 80, 80)  # two convs per block, max-pool 2 after each block
    model.dense_sizes = (1000, 800, 600)
    model.lstm_size = 500
    model.lstm_initial_state = "random"   # paper: random initial state; or "zeros"
    model.output_activation = "sigmoid"   # paper: sigmoid outputs; "none" gives logits (for bce)
    model.attention_heads = 4             # for *_attention models
    # How the conv trunks run (speed only, results are the same): "auto" takes the CPU fast path
    # (jaxtag/models/ops.py) on a CPU backend and plain Flax layers elsewhere; "flax"; "cpu_fast".
    model.implementation = "auto"
    # CPU fast path: windows per chunk of the paper trunk's conv layers (0: 2 on one CPU device,
    # where chunks stay in cache; all windows with several devices).
    model.window_chunk = 0
    # Computation dtype: "bfloat16" on GPU/TPU halves activation memory and uses the matrix units;
    # parameters, optimizer state, the input transform and the loss stay float32.
    model.dtype = "float32"
    # Input transform, applied in the model so the prepared data stays the paper's power mel.
    model.compression = "none"         # paper: power mel; "log1p": log(1 + log_scale * mel); "db"
    model.log_scale = 10000.0
    model.normalize = False            # per-mel-bin standardisation, statistics from the train split
    # musicnn_* models: the published weights their trunk starts from, and whether it stays frozen.
    model.pretrained = "musicnn-msd"   # or "musicnn-mtt"
    model.freeze_trunk = True
    model.musicnn_layer = "penultimate"  # the trunk's features: its 200-d penultimate layer, or "pooled" (1506-d)

    # ---- Training (paper 4.3). ----
    train = config.train = ml_collections.ConfigDict()
    train.loss = "margin"              # paper: multi-label margin loss; or "bce" (needs logits)
    train.pos_weight = "none"          # bce only: "balanced" weighs positives by negatives/positives
    train.learning_rate = 1e-5
    train.trunk_learning_rate = 1e-5   # musicnn_* models with model.freeze_trunk=False (fine-tuning)
    train.batch_size = 1               # tracks per step; 1 is the paper's setting
    train.num_epochs = 10              # the paper does not say; see README for real data
    # Tracks are padded (and masked) to the smallest bucket that holds them, so the train
    # step compiles once per bucket. Longer tracks round up to a multiple of the last bucket.
    # Spaced ~25% apart: padding wastes at most ~25% of a step; each bucket costs one compilation.
    train.length_buckets = (4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
                            160, 192, 224, 256)
    train.shuffle_buffer = 512
    train.keep_checkpoints = 2
    train.checkpoint_every_steps = 200   # mid-epoch checkpoints (resumable exactly); 0: epoch ends only
    train.log_every_tracks = 20

    # ---- Evaluation (paper 5). ----
    evaluation = config.eval = ml_collections.ConfigDict()
    evaluation.threshold = 0.5
    evaluation.tune_thresholds = False  # per-tag thresholds maximising validation F1
    evaluation.best_metric = "mean_roc_auc"   # validation metric that picks the best checkpoint
    return config
