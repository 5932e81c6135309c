"""tf.data pipeline over the prepared cal500exp dataset.

`load_split` yields one example per track: track (name), mel [n_windows, window_frames, n_mels],
labels [n_windows, n_tags], mask [n_windows]. `bucketed_batches` pads tracks to a few length
buckets and batches them, so a jitted step compiles once per bucket.
"""
from __future__ import annotations

import collections
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from jaxtag.data.buckets import bucket_length
from jaxtag.data.cal500exp import Cal500exp, Cal500expConfig, PreparedSettings
from jaxtag.data.features import FrontendSettings
from jaxtag.errors import ConfigError
from jaxtag.data import corpus
from jaxtag.data.tags import CAL500EXP_TAGS, resolve_tags

# The pipeline runs on the host CPU; keep TensorFlow off any accelerator JAX uses.
tf.config.set_visible_devices([], "GPU")


def prepared_settings(config) -> PreparedSettings:
    """The settings of config that determine the prepared data."""
    d = config.data
    synthetic, corpus_id, vocabulary = (), "", CAL500EXP_TAGS
    if d.root:
        corpus_id = os.path.abspath(os.path.expanduser(d.root))
        if os.path.isdir(corpus_id):  # (a missing root is reported by prepare, naming it)
            vocabulary = corpus.corpus_vocabulary(corpus_id, d.label_set, d.label_dir, bool(d.skip_bad_tracks))
    else:
        synthetic = tuple(sorted(d.synthetic.to_dict().items()))
    try:
        tags = resolve_tags(d.tags, vocabulary)
    except ValueError as e:
        raise ConfigError(f"data.tags: {e}") from None
    return PreparedSettings(
        frontend=FrontendSettings.from_config(d), tags=tags, unannotated=d.unannotated,
        vocabulary=() if vocabulary == CAL500EXP_TAGS else vocabulary,
        label_set=d.label_set, label_dir=d.label_dir, audio_dir=d.audio_dir,
        split_seed=int(d.split_seed), split_fractions=tuple(float(f) for f in d.split_fractions),
        skip_bad_tracks=bool(d.skip_bad_tracks), synthetic=synthetic, corpus_id=corpus_id)


def data_dir(config) -> str:
    return os.path.expanduser(config.data.data_dir or os.environ.get("JAXTAG_DATA_DIR", "~/jaxtag_data"))


def get_builder(config) -> Cal500exp:
    settings = prepared_settings(config)
    # TFDS refuses a custom config named like a registered one: pass the name for those.
    name = settings.config_name
    builder_config = name if name in Cal500exp.builder_configs else Cal500expConfig.from_settings(settings)
    return Cal500exp(config=builder_config, data_dir=data_dir(config))


_PREPARED: dict[tuple[str, str], Cal500exp] = {}


def prepare(config, beam_pipeline_options: str | None = None) -> Cal500exp:
    """Build the prepared dataset if it is not there yet (idempotent), and return its builder.
    beam_pipeline_options ("runner=...,..."; jaxtag.beam): prepare on Apache Beam instead of a
    local thread pool (the same dataset: same splits, keys and arrays)."""
    cache_key = (prepared_settings(config).config_name, data_dir(config))
    if cache_key in _PREPARED:  # already prepared in this process
        return _PREPARED[cache_key]
    beam_options = None
    if beam_pipeline_options:
        from jaxtag.beam import pipeline_options
        beam_options = pipeline_options(beam_pipeline_options)
    builder = get_builder(config)
    builder.use_beam = beam_options is not None
    manual_dir = None
    if config.data.root:
        manual_dir = os.path.abspath(os.path.expanduser(config.data.root))
        if not os.path.isdir(manual_dir):
            from jaxtag.errors import DataError
            raise DataError(manual_dir, "data root does not exist (set --config.data.root to a CAL500exp directory)")
    else:
        logging.warning("No --config.data.root given: using the built-in SYNTHETIC corpus.")
    if not builder.is_prepared():
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, beam_options=beam_options)
        if beam_options is None:
            builder.download_and_prepare(download_config=download_config)
        else:
            from jaxtag.beam import failures_named
            with failures_named("preparing the corpus"):
                builder.download_and_prepare(download_config=download_config)
        # The finished dataset holds every track: the per-track cache of interrupted runs can go.
        from jaxtag.data.cal500exp.cal500exp_dataset_builder import TrackCache
        TrackCache(os.path.join(data_dir(config), "cal500exp", "track_cache", builder.builder_config.name)).clear()
    _PREPARED[cache_key] = builder
    return builder


_DECODED: dict[tuple, tf.data.Dataset] = {}


def _to_windows(window_frames: int):
    def fn(ex):
        idx = ex["window_start"][:, None] + tf.range(window_frames, dtype=tf.int32)[None, :]
        return {"track": ex["track"], "mel": tf.gather(ex["mel"], idx),
                "labels": ex["labels"], "mask": ex["mask"]}
    return fn


def load_split(config, split: str, *, shuffle: bool | None = None, seed: int | None = None,
               shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """One example per track of `split` ("train", "validation", "test"), prepared if needed.

    The train split is shuffled by default: each pass over the returned dataset is a new order,
    determined by `seed` (default config.seed). `shard=(index, count)` reads only the index-th of
    count even parts of the split (TFDS reads just those records), for one host of many.
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(f"unknown split {split!r}")
    builder = prepare(config)
    shuffle = split == "train" if shuffle is None else shuffle
    seed = int(config.seed if seed is None else seed)
    # Decoded tracks are cached in memory by the first pass and shared by every later pipeline of
    # the same split (each epoch builds one): epochs after the first skip reading and parsing.
    # Frames, not windows, are cached: CAL500exp's 500 tracks take about 250 MB.
    key = (builder.builder_config.name, str(builder.data_dir), split, tuple(shard))
    if key not in _DECODED:
        part = split if shard[1] == 1 else tfds.even_splits(split, n=shard[1], drop_remainder=False)[shard[0]]
        _DECODED[key] = builder.as_dataset(split=part, shuffle_files=False).cache()
    ds = _DECODED[key]
    if shuffle:
        ds = ds.shuffle(int(config.train.shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_to_windows(int(config.data.window_frames)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def bucketed_batches(ds: tf.data.Dataset, batch_size: int, buckets: Sequence[int]) -> Iterator[dict]:
    """Batches of `batch_size` tracks of one bucket length, as numpy.

    Each batch: mel [B, L, window, n_mels], labels [B, L, C], mask [B, L] (labelled real windows),
    present [B, L] (real windows: the LSTM skips padding), track [B] names ("" for batch padding).
    Tracks are grouped by bucket as they stream; leftovers are flushed as padded batches at the end.
    """
    pending: dict[int, list[dict]] = {}
    for ex in ds.as_numpy_iterator():
        n = ex["mel"].shape[0]
        length = bucket_length(n, buckets)
        pending.setdefault(length, []).append(ex)
        if len(pending[length]) == batch_size:
            yield _pad_batch(pending.pop(length), length, batch_size)
    for length in sorted(pending):
        yield _pad_batch(pending[length], length, batch_size)


def _pad_batch(examples: list[dict], length: int, batch_size: int, row_shape: tuple[int, int, int] | None = None
               ) -> dict:
    """examples padded to `length` windows and `batch_size` rows; row_shape (window_frames, n_mels,
    n_tags) is needed only when there are no examples (a host with no track for a step)."""
    if examples:
        window, n_mels = examples[0]["mel"].shape[1:]
        n_tags = examples[0]["labels"].shape[1]
    else:
        window, n_mels, n_tags = row_shape
    mel = np.zeros((batch_size, length, window, n_mels), np.float32)
    labels = np.zeros((batch_size, length, n_tags), np.float32)
    mask = np.zeros((batch_size, length), bool)
    present = np.zeros((batch_size, length), bool)
    names = [""] * batch_size
    for i, ex in enumerate(examples):
        n = ex["mel"].shape[0]
        mel[i, :n], labels[i, :n], mask[i, :n], present[i, :n] = ex["mel"], ex["labels"], ex["mask"], True
        names[i] = ex["track"].decode() if isinstance(ex["track"], bytes) else str(ex["track"])
    return {"mel": mel, "labels": labels, "mask": mask, "present": present, "track": np.array(names)}


# Multi-host training: each host reads only its own shard of the train split (one of n_hosts
# even parts). The hosts must still run the same program each step, so they agree on a plan: the bucket
# length of every step of the epoch, computed identically on every host from all hosts' track
# lengths (exchanged once). Each host fills its rows of a step with its next tracks of that bucket.

def track_lengths(config, split: str, shard: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Windows per track of one shard of a split (its first full pass also fills the memory cache)."""
    ds = load_split(config, split, shuffle=False, shard=shard)
    return np.array([len(ex["mask"]) for ex in ds.as_numpy_iterator()], np.int64)


def _bucket_counts(lengths: Sequence[int], buckets: Sequence[int]) -> collections.Counter:
    """How many of the tracks of these lengths fall in each bucket."""
    return collections.Counter(bucket_length(int(n), buckets) for n in lengths)


def multi_host_plan(lengths_by_host: Sequence[Sequence[int]], host_batch_size: int, buckets: Sequence[int],
                    seed: int) -> list[int]:
    """The bucket length of each step of an epoch, the same on every host: per bucket, as many
    steps as the host with the most tracks of that bucket needs, in a seeded random order."""
    per_host = [_bucket_counts(lengths, buckets) for lengths in lengths_by_host]
    busiest = collections.Counter()
    for counts in per_host:
        busiest |= counts  # per bucket, the most tracks any host has
    plan = [b for b in sorted(busiest) for _ in range(-(-busiest[b] // host_batch_size))]
    np.random.default_rng(seed).shuffle(plan)
    return plan


def host_batches(ds: tf.data.Dataset, plan: Sequence[int], host_batch_size: int, buckets: Sequence[int],
                 row_shape: tuple[int, int, int], own_lengths: Sequence[int]) -> Iterator[dict]:
    """This host's rows of each step of `plan`: its next tracks of the step's bucket, read from its
    own (shuffled) shard and held until their bucket's turn; rows without a track are padding.
    own_lengths (this shard's track lengths) says how many tracks of each bucket are still
    unread, so the stream is read only as far as the step needs."""
    unread = _bucket_counts(own_lengths, buckets)
    stream = ds.as_numpy_iterator()
    pools: dict[int, list[dict]] = {}
    for length in plan:
        pool = pools.setdefault(length, [])
        while len(pool) < host_batch_size and unread[length] > 0:
            ex = next(stream, None)
            if ex is None:
                break
            got = bucket_length(ex["mel"].shape[0], buckets)
            pools.setdefault(got, []).append(ex)
            unread[got] -= 1
        take, pools[length] = pool[:host_batch_size], pool[host_batch_size:]
        yield _pad_batch(take, length, host_batch_size, row_shape)
    left = sum(len(p) for p in pools.values()) + sum(1 for _ in stream)
    if left:  # the plan came from other lengths than this shard's: a bug, not bad data
        raise RuntimeError(f"{left} track(s) of this host's shard were not in the multi-host plan")


def host_shard_lengths(config, host: int, n_hosts: int) -> np.ndarray:
    """track_lengths of this host's part of the train split; every host fails alike (before any
    collective) when the split has fewer tracks than there are hosts."""
    n_train = prepare(config).info.splits["train"].num_examples
    if n_train < n_hosts:
        raise ConfigError(f"the train split has {n_train} track(s), fewer than the {n_hosts} hosts: each host "
                          "needs at least one (use fewer hosts)")
    return track_lengths(config, "train", (host, n_hosts))


def train_batches(config, epoch: int, host: int = 0, n_hosts: int = 1,
                  lengths_by_host: Sequence[Sequence[int]] | None = None) -> Iterator[dict]:
    """The train batches of one epoch for one host: with one host, the whole shuffled split in
    batches of train.batch_size tracks; with n_hosts, this host's train.batch_size / n_hosts rows
    of each step of the common plan (lengths_by_host: every host's `track_lengths`)."""
    seed = config.seed * 100003 + epoch
    buckets = tuple(config.train.length_buckets)
    if n_hosts == 1:
        return bucketed_batches(load_split(config, "train", seed=seed), config.train.batch_size, buckets)
    if config.train.batch_size % n_hosts:
        raise ConfigError(f"train.batch_size ({config.train.batch_size}) must be a multiple of the number of "
                          f"hosts ({n_hosts})")
    per_host = config.train.batch_size // n_hosts
    plan = multi_host_plan(lengths_by_host, per_host, buckets, seed)
    row_shape = (int(config.data.window_frames), int(config.data.n_mels), len(prepared_settings(config).tags))
    return host_batches(load_split(config, "train", seed=seed, shard=(host, n_hosts)), plan, per_host, buckets,
                        row_shape, lengths_by_host[host])


def summarize(builder: Cal500exp) -> dict:
    """Tracks per split, windows, label frequency per tag, annotated fraction."""
    settings: PreparedSettings = builder.builder_config.settings
    out = {"config": builder.builder_config.name, "data_dir": str(builder.data_dir),
           "tags": list(settings.tags), "splits": {}}
    totals = np.zeros(len(settings.tags))
    n_labelled = 0
    for split in ("train", "validation", "test"):
        n_tracks = n_windows = n_masked = frames = annotated = 0
        for ex in builder.as_dataset(split=split).as_numpy_iterator():
            n_tracks += 1
            n_windows += len(ex["mask"])
            n_masked += int((~ex["mask"]).sum())
            totals += ex["labels"][ex["mask"]].sum(axis=0)
            n_labelled += int(ex["mask"].sum())
            frames += int(ex["n_frames"])
            annotated += int(ex["n_annotated_frames"])
        out["splits"][split] = {"tracks": n_tracks, "windows": n_windows, "masked_windows": n_masked,
                                "frames": frames,
                                "annotated_fraction": annotated / frames if frames else 0.0}
    out["label_frequency"] = dict(zip(settings.tags, (totals / max(n_labelled, 1)).tolist()))
    return out


def train_statistics(config) -> dict:
    """Per-mel-bin mean and std of the model input (after the model's compression) over the train
    split's frames, and each tag's positive rate over labelled train windows. Train split only, so
    nothing leaks from validation or test."""
    from jaxtag.models.network import compress
    builder = prepare(config)
    total = total_sq = None
    n_frames = 0
    positives, n_windows = 0.0, 0
    for ex in builder.as_dataset(split="train").as_numpy_iterator():
        x = np.asarray(compress(ex["mel"][:ex["n_frames"]], config.model.compression, config.model.log_scale),
                       np.float64)
        total = x.sum(0) if total is None else total + x.sum(0)
        total_sq = (x ** 2).sum(0) if total_sq is None else total_sq + (x ** 2).sum(0)
        n_frames += x.shape[0]
        positives = positives + ex["labels"][ex["mask"]].sum(0)
        n_windows += int(ex["mask"].sum())
    mean = total / n_frames
    std = np.sqrt(np.maximum(total_sq / n_frames - mean ** 2, 0.0))
    std = np.maximum(std, 1e-3 * max(float(std.max()), 1e-12))  # silent bins must not divide by ~0
    return {"mean": mean.tolist(), "std": std.tolist(),
            "positive_rate": (np.asarray(positives) / max(n_windows, 1)).tolist(), "num_frames": n_frames}
