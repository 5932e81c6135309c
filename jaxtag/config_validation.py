"""Check a config before any work, so an impossible value fails at once with the reason."""
from __future__ import annotations

from jaxtag.errors import ConfigError


def validate_config(config) -> None:
    from jaxtag.data.labels import UNANNOTATED_MODES
    from jaxtag.data.tags import resolve_tags
    from jaxtag.models import DTYPES, IMPLEMENTATIONS, MODELS
    from jaxtag.training.losses import LOSSES
    d, m, t = config.data, config.model, config.train
    problems = []
    if m.name not in MODELS:
        problems.append(f"model.name {m.name!r} is not one of {sorted(MODELS)}")
    if t.loss not in LOSSES:
        problems.append(f"train.loss {t.loss!r} is not one of {sorted(LOSSES)}")
    elif t.loss == "bce" and m.output_activation != "none":
        problems.append("train.loss 'bce' works on logits: set model.output_activation='none'")
    if m.output_activation not in ("sigmoid", "none"):
        problems.append(f"model.output_activation must be 'sigmoid' or 'none', got {m.output_activation!r}")
    if m.compression not in ("none", "log1p", "db"):
        problems.append(f"model.compression must be 'none', 'log1p' or 'db', got {m.compression!r}")
    if m.lstm_initial_state not in ("random", "zeros"):
        problems.append(f"model.lstm_initial_state must be 'random' or 'zeros', got {m.lstm_initial_state!r}")
    if m.musicnn_layer not in ("penultimate", "pooled"):
        problems.append(f"model.musicnn_layer must be 'penultimate' or 'pooled', got {m.musicnn_layer!r}")
    if m.implementation not in IMPLEMENTATIONS:
        problems.append(f"model.implementation must be one of {IMPLEMENTATIONS}, got {m.implementation!r}")
    if m.dtype not in DTYPES:
        problems.append(f"model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
    if int(m.get("window_chunk", 0)) < 0:
        problems.append(f"model.window_chunk must be >= 0 (0: automatic), got {m.window_chunk}")
    if t.pos_weight not in ("none", "balanced"):
        problems.append(f"train.pos_weight must be 'none' or 'balanced', got {t.pos_weight!r}")
    if not d.root:  # a user's corpus may have its own tags: checked when its CSV headers are read
        try:
            resolve_tags(d.tags)
        except ValueError as e:
            problems.append(f"data.tags: {e}")
    for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "window_frames", "window_hop"):
        if int(d[name]) <= 0:
            problems.append(f"data.{name} must be positive, got {d[name]}")
    if d.window_hop > d.window_frames:
        problems.append(f"data.window_hop ({d.window_hop}) exceeds data.window_frames ({d.window_frames})")
    if not d.root and int(d.hop_length) > 0 and int(d.sample_rate) > 0:
        # The built-in corpus's track lengths are known before any work (a real corpus's are not:
        # its tracks shorter than a window are padded, see README).
        window_seconds = (d.window_frames - 1) * d.hop_length / d.sample_rate
        if window_seconds > d.synthetic.max_seconds:
            problems.append(f"a window of data.window_frames={d.window_frames} frames ({window_seconds:.1f} s) is "
                            f"longer than every track of the built-in corpus (at most {d.synthetic.max_seconds} s)")
    n_pools = len(m.conv_channels) // 2
    if min(d.window_frames, d.n_mels) < 2 ** n_pools:
        problems.append(f"window_frames and n_mels must be at least {2 ** n_pools} for {n_pools} pooling layers")
    if d.unannotated not in UNANNOTATED_MODES:
        problems.append(f"data.unannotated must be one of {UNANNOTATED_MODES}, got {d.unannotated!r}")
    if not t.learning_rate > 0:
        problems.append(f"train.learning_rate must be positive, got {t.learning_rate}")
    if t.batch_size < 1 or t.num_epochs < 0:
        problems.append("train.batch_size must be >= 1 and train.num_epochs >= 0")
    if not t.length_buckets or list(t.length_buckets) != sorted(set(t.length_buckets)) or min(t.length_buckets) < 1:
        problems.append(f"train.length_buckets must be increasing positive numbers, got {t.length_buckets}")
    if not 0.0 < config.eval.threshold < 1.0:
        problems.append(f"eval.threshold must lie in (0, 1), got {config.eval.threshold}")
    problems += _pretrained_trunk_problems(config)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _pretrained_trunk_problems(config) -> list[str]:
    """A pretrained trunk (musicnn) fixes the frontend it was trained with, and compresses its input
    itself."""
    from jaxtag.models import pretrained_trunk
    from jaxtag.models.musicnn import MUSICNN_FRONTEND
    from jaxtag.pretrained import PRETRAINED
    d, m = config.data, config.model
    name = pretrained_trunk(m)
    if name is None:
        return []
    problems = []
    if name not in PRETRAINED:
        problems.append(f"model.pretrained {name!r} is not one of {sorted(PRETRAINED)}")
    for field in ("sample_rate", "n_fft", "hop_length", "n_mels"):
        if d[field] != getattr(MUSICNN_FRONTEND, field):
            problems.append(f"model {m.name!r} has musicnn's frontend: data.{field} must be "
                            f"{getattr(MUSICNN_FRONTEND, field)}, got {d[field]} (see configs/musicnn_lstm.py)")
    if m.compression != "none" or m.normalize:
        problems.append(f"model {m.name!r} compresses its input as musicnn does: set model.compression='none' "
                        "and model.normalize=False")
    if not m.freeze_trunk and not config.train.trunk_learning_rate > 0:
        problems.append(f"train.trunk_learning_rate must be positive to fine-tune the trunk, got "
                        f"{config.train.trunk_learning_rate}")
    return problems
