"""musicnn (Pons & Serra 2019) in Flax, for its published weights (see jaxtag.pretrained).

A port of `build_musicnn` in musicnn 0.1.0's models.py (ISC licence), layer for layer:

- front-end, on the log-mel patch [N, T, 96] after a 1-channel batch norm:
  timbral branches: time padded by 3 on each side, 2-D conv "valid" 7x38 and 7x67 (204 filters
  each), ReLU, batch norm, max over all remaining frequency positions;
  temporal branches: 2-D conv 128x1, 64x1, 32x1 (51 filters each) with TF's "same" padding (the
  extra frame of an even kernel goes after), ReLU, batch norm, max over the 96 mel bins.
  Concatenated: 204 + 204 + 3 * 51 = 561 channels per frame.
- mid-end: three 1-D convs of width 7 (64 filters, time padded by 3), each ReLU then batch norm;
  the 2nd and 3rd add a residual. The front-end and the three mid-end outputs are concatenated:
  561 + 3 * 64 = 753 channels.
- back-end: max and mean over time, flattened interleaved (max0, mean0, max1, mean1, ...) like
  TF's flatten of the [N, 753, 2] stack; batch norm; dense 200 + ReLU; batch norm (the
  "penultimate" features); dense num_tags (logits; the original's probabilities are sigmoids).

Every batch norm uses its running averages and TF's epsilon 1e-3; there is no dropout (inference,
or fine-tuning with frozen statistics). Computation is float32 throughout.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.data.features import FrontendSettings

N_MELS = 96
BN_EPSILON = 1e-3  # tf.compat.v1.layers.batch_normalization's default (Flax's is 1e-5).
TIMBRAL_FILTERS = 204  # int(1.6 * 128)
TEMPORAL_FILTERS = 51  # int(1.6 * 32)
TIMBRAL_KERNELS = ((7, int(0.4 * N_MELS)), (7, int(0.7 * N_MELS)))  # (7, 38), (7, 67)
TEMPORAL_KERNELS = (128, 64, 32)
MIDEND_FILTERS = 64
BACKEND_UNITS = 200
FRONTEND_CHANNELS = 2 * TIMBRAL_FILTERS + len(TEMPORAL_KERNELS) * TEMPORAL_FILTERS  # 561
MIDEND_CHANNELS = FRONTEND_CHANNELS + 3 * MIDEND_FILTERS  # 753

# 16 kHz mono, n_fft 512, hop 256, 96 mels (librosa defaults otherwise); patches of 187 frames (3 s).
MUSICNN_FRONTEND = FrontendSettings(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96,
                                    window_frames=187, window_hop=187)


def compress(mel_power):
    """The original's input compression log10(1 + 10000 * mel), in float32.

    (The original first casts the mel power to float16, which overflows to inf above 6.55; this
    does not.) Returns a numpy array for numpy input, a jax array for jax input.
    """
    if isinstance(mel_power, jax.Array):
        return jnp.log10(1.0 + 10000.0 * jnp.asarray(mel_power, jnp.float32))
    mel = np.asarray(mel_power, dtype=np.float32)
    return np.log10(np.float32(1.0) + np.float32(10000.0) * mel).astype(np.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def single_channel_conv(x, kernel, padding):
    """2-D convolution of a one-channel map x [N, T, F, 1] with kernel [KT, KF, 1, C] (no bias),
    `padding` ((before_t, after_t), (before_f, after_f)): XLA's convolution, with a kernel
    gradient computed another way.

    XLA's CPU convolution differentiates a one-channel input's kernel slowly (it convolves the
    input with the output gradient as a [T, F]-sized kernel of one channel: 36-60 ms a window
    for each of musicnn's big front-end convs, 7-18x their forward pass), which made fine-tuning
    musicnn crawl. The same sums as a 1-D convolution over time whose channels are (example,
    frequency position) run 4-11x faster; the forward pass and the input gradient are XLA's own.
    """
    return _conv2d(x, kernel, padding)


def _conv2d(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


def _single_channel_conv_fwd(x, kernel, padding):
    return _conv2d(x, kernel, padding), (x, kernel)


def _single_channel_conv_bwd(padding, residuals, out_grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _conv2d(x_, kernel, padding), x)
    (x_grad,) = input_vjp(out_grad)   # unused (and compiled away) when x needs no gradient
    return x_grad, _kernel_grad(x, out_grad, kernel.shape, padding)


def _kernel_grad(x, out_grad, kernel_shape, padding):
    """d(sum(out * out_grad)) / d kernel: kernel[kt, kf, c] = sum over n, t, f of
    x_padded[n, t + kt, f + kf] * out_grad[n, t, f, c]."""
    kt, kf, _, channels = kernel_shape
    n, t_out, f_out, _ = out_grad.shape
    padded = jnp.pad(x[..., 0], ((0, 0),) + tuple(padding))                 # [N, T_out+KT-1, F_out+KF-1]
    shifted = jnp.stack([padded[:, :, i:i + f_out] for i in range(kf)])     # [KF, N, T_in, F_out]
    lhs = jnp.transpose(shifted, (0, 2, 1, 3)).reshape(kf, t_out + kt - 1, n * f_out)
    rhs = jnp.transpose(out_grad, (1, 0, 2, 3)).reshape(t_out, n * f_out, channels)
    grad = jax.lax.conv_general_dilated(lhs, rhs.astype(lhs.dtype), (1,), "VALID",
                                        dimension_numbers=("NWC", "WIO", "NWC"),
                                        precision=jax.lax.Precision.HIGHEST)  # [KF, KT, C]
    return jnp.transpose(grad, (1, 0, 2))[:, :, None, :].astype(x.dtype)


single_channel_conv.defvjp(_single_channel_conv_fwd, _single_channel_conv_bwd)


class FrontendConv(nn.Module):
    """nn.Conv's parameters ("kernel" [KT, KF, 1, C], "bias" [C]) over a one-channel map, through
    single_channel_conv (fast kernel gradient for fine-tuning). dtype: the convolution's (its input
    and kernel; the output is float32 again): bfloat16 is reduced-precision tagging on GPU/TPU."""
    features: int
    kernel_size: tuple
    padding: tuple   # ((before_t, after_t), (before_f, after_f))
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            tuple(self.kernel_size) + (1, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = single_channel_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
        return y.astype(jnp.float32) + bias


def _same_padding(kernel: int) -> tuple[int, int]:
    """TF's "same" padding for stride 1: the odd frame of an even kernel goes after."""
    before = (kernel - 1) // 2
    return before, kernel - 1 - before


class Musicnn(nn.Module):
    """musicnn: log-mel patches [N, frames, 96] (already compressed) -> logits [N, num_tags].

    Works for any number of frames (the original was trained on 187 = 3 s, and allows others).
    Variables: "params" (conv/dense kernels and biases, batch-norm scales and biases) and
    "batch_stats" (batch-norm running means and variances).
    """
    num_tags: int = 50
    # Fine-tuning: no gradient into the input batch norm (one scale and shift for the whole
    # log-mel). Its gradient needs the front-end convs' input gradient, which XLA's CPU convolution
    # computes ~6x slower than all the rest of the backward pass (2.2 vs 12.8 windows/s).
    freeze_input_norm: bool = False
    # The front-end convolutions' dtype (97% of the FLOPs); the rest stays float32. bfloat16: the
    # GPU/TPU side of --precision=bfloat16 (on CPU that is OpenVINO: jaxtag.models.musicnn_openvino,
    # which splits the network the same way).
    frontend_dtype: Any = jnp.float32

    def setup(self):
        f32 = jnp.float32
        hi = jax.lax.Precision.HIGHEST
        bn = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=BN_EPSILON,
                               dtype=f32, param_dtype=f32)
        conv = functools.partial(nn.Conv, dtype=f32, param_dtype=f32, precision=hi)
        dense = functools.partial(nn.Dense, dtype=f32, param_dtype=f32, precision=hi)
        front = functools.partial(FrontendConv, dtype=self.frontend_dtype)

        self.input_bn = bn()
        # Timbral branches: time padded explicitly before them (see _frontend), "valid" convs.
        valid = ((0, 0), (0, 0))
        self.timbral_7x38 = front(TIMBRAL_FILTERS, TIMBRAL_KERNELS[0], padding=valid)
        self.timbral_7x38_bn = bn()
        self.timbral_7x67 = front(TIMBRAL_FILTERS, TIMBRAL_KERNELS[1], padding=valid)
        self.timbral_7x67_bn = bn()
        # Temporal branches: TF "same" padding along time, none along frequency (kernel width 1).
        self.temporal_128 = front(TEMPORAL_FILTERS, (128, 1), padding=(_same_padding(128), (0, 0)))
        self.temporal_128_bn = bn()
        self.temporal_64 = front(TEMPORAL_FILTERS, (64, 1), padding=(_same_padding(64), (0, 0)))
        self.temporal_64_bn = bn()
        self.temporal_32 = front(TEMPORAL_FILTERS, (32, 1), padding=(_same_padding(32), (0, 0)))
        self.temporal_32_bn = bn()
        # Mid-end: the original's 2-D convs of kernel [7, channels] on a 1-channel map are 1-D
        # convs over time with all channels as input.
        self.midend_conv1 = conv(MIDEND_FILTERS, (7,), padding=((3, 3),))
        self.midend_conv1_bn = bn()
        self.midend_conv2 = conv(MIDEND_FILTERS, (7,), padding=((3, 3),))
        self.midend_conv2_bn = bn()
        self.midend_conv3 = conv(MIDEND_FILTERS, (7,), padding=((3, 3),))
        self.midend_conv3_bn = bn()
        # Back-end.
        self.backend_pool_bn = bn()
        self.backend_dense = dense(BACKEND_UNITS)
        self.backend_dense_bn = bn()
        self.output_dense = dense(self.num_tags)

    def _check(self, logmel):
        logmel = jnp.asarray(logmel, jnp.float32)
        if logmel.ndim != 3 or logmel.shape[-1] != N_MELS or logmel.shape[1] < 1:
            raise ValueError(f"musicnn takes log-mel patches [N, frames, {N_MELS}], got shape "
                             f"{tuple(logmel.shape)}")
        return logmel

    def _frontend(self, logmel):
        x = self.input_bn(logmel[..., None])                       # [N, T, 96, 1]
        if self.freeze_input_norm:
            x = jax.lax.stop_gradient(x)
        padded = jnp.pad(x, ((0, 0), (3, 3), (0, 0), (0, 0)))      # zeros after the input BN
        branches = []
        for conv, bn in ((self.timbral_7x38, self.timbral_7x38_bn),
                         (self.timbral_7x67, self.timbral_7x67_bn)):
            branches.append(jnp.max(bn(nn.relu(conv(padded))), axis=2))   # [N, T, 204]
        for conv, bn in ((self.temporal_128, self.temporal_128_bn),
                         (self.temporal_64, self.temporal_64_bn),
                         (self.temporal_32, self.temporal_32_bn)):
            branches.append(jnp.max(bn(nn.relu(conv(x))), axis=2))        # [N, T, 51]
        return jnp.concatenate(branches, axis=-1)                  # [N, T, 561]

    def _midend(self, front):
        c1 = self.midend_conv1_bn(nn.relu(self.midend_conv1(front)))
        c2 = self.midend_conv2_bn(nn.relu(self.midend_conv2(c1))) + c1
        c3 = self.midend_conv3_bn(nn.relu(self.midend_conv3(c2))) + c2
        return jnp.concatenate([front, c1, c2, c3], axis=-1)       # [N, T, 753]

    def pooled(self, logmel):
        """The back-end's input [N, 1506]: the 753-channel map max- and mean-pooled over time,
        interleaved, batch-normed."""
        feature_map = self._midend(self._frontend(self._check(logmel)))
        max_pool = jnp.max(feature_map, axis=1)                    # [N, 753]
        mean_pool = jnp.mean(feature_map, axis=1)
        # TF flattens concat([max, mean], axis=2) of shape [N, 753, 2]: interleaved.
        pooled = jnp.stack([max_pool, mean_pool], axis=-1).reshape(feature_map.shape[0], -1)
        return self.backend_pool_bn(pooled)                        # [N, 1506]

    def _penultimate(self, logmel):
        return self.backend_dense_bn(nn.relu(self.backend_dense(self.pooled(logmel))))  # [N, 200]

    def features(self, logmel):
        """The 200-d penultimate activations [N, 200] (the original's "penultimate")."""
        return self._penultimate(logmel)

    def logits_from_features(self, features):
        """The output layer alone: penultimate features [..., 200] -> logits [..., num_tags]."""
        return self.output_dense(features)

    def __call__(self, logmel):
        """Logits [N, num_tags]; sigmoid gives the original's tag probabilities."""
        return self.output_dense(self._penultimate(logmel))


def _windows_to_logmel(mel):
    """Power-mel windows [B, L, frames, 96] -> compressed patches [B * L, frames, 96]."""
    return compress(jnp.asarray(mel, jnp.float32)).reshape((-1,) + mel.shape[2:])


def window_by_window(network, logmel):
    """network (a Musicnn method: patches [N, frames, 96] -> [N, D]) over the N windows one at a
    time, a loop inside the jitted function. For XLA:CPU: a window's front-end conv outputs
    (~25 MB) then stay in cache and reuse one buffer; over a 32-window chunk at once they were
    fresh memory on every call (page faults: 0.6 CPU-s of system time per 128 windows), read back
    from RAM: 48-50 windows/s, one at a time 53-55. A GPU or TPU wants the whole batch at once."""
    return jax.lax.map(lambda window: network(window[None])[0], logmel)


class MusicnnTagger(nn.Module):
    """musicnn's own tagger (its 50 tags) behind the two stages of jaxtag's Tagger: `encode`
    (power-mel windows [B, L, frames, 96] -> penultimate features [B, L, 200], windows
    independent) and `across_windows` (features -> tag probabilities [B, L, num_tags]). Variables: those
    of jaxtag.pretrained.load_pretrained under "musicnn". `cpu_fast` (jaxtag.models.
    uses_cpu_fast_path: on a CPU backend) runs the network window_by_window."""
    num_tags: int = 50
    cpu_fast: bool = False
    frontend_dtype: Any = jnp.float32   # (Musicnn.frontend_dtype)

    def setup(self):
        self.musicnn = Musicnn(self.num_tags, frontend_dtype=self.frontend_dtype)

    def encode(self, mel, present=None, train: bool = False):
        del present, train
        logmel = _windows_to_logmel(mel)
        if self.cpu_fast and not self.is_initializing():   # (variables are created outside a loop)
            features = window_by_window(self.musicnn.features, logmel)
        else:
            features = self.musicnn.features(logmel)
        return features.reshape(mel.shape[:2] + (-1,))

    def across_windows(self, features, present=None, train: bool = False):
        del present, train
        return nn.sigmoid(self.musicnn.logits_from_features(features))

    def penultimate(self, features, present=None, train: bool = False):
        """The input of the output layer, per window: here musicnn's own penultimate features."""
        del present, train
        return features

    def __call__(self, mel, present=None, train: bool = False):
        return self.across_windows(self.encode(mel, present))


class MusicnnTrunk(nn.Module):
    """musicnn as a window trunk for jaxtag's training configs (model "musicnn_*"): a power-mel
    window [N, frames, 96] -> musicnn's 200-d penultimate features, or its 1506-d pooled map
    (`layer`; its published weights, see jaxtag.pretrained; batch-norm statistics frozen) -> dense
    `features` + ReLU (trained).
    With `trainable=False` no gradient flows into musicnn (a frozen feature extractor)."""
    channels: tuple = ()  # unused: the trunk's sizes are musicnn's
    features: int = 1000
    dtype: Any = jnp.float32
    cpu_fast: bool = False  # on CPU: one window at a time where no gradient flows into musicnn
    trainable: bool = False
    layer: str = "penultimate"  # musicnn's 200-d penultimate layer, or "pooled": its 1506-d back-end input

    @nn.compact
    def __call__(self, x, present=None, train: bool = False):
        del present
        musicnn = Musicnn(freeze_input_norm=True, name="musicnn")
        logmel = compress(jnp.asarray(x, jnp.float32))
        layer = musicnn.pooled if self.layer == "pooled" else musicnn.features
        if self.cpu_fast and not (self.trainable and train) and not self.is_initializing():
            h = window_by_window(layer, logmel)   # no gradient flows into musicnn here
        else:
            h = layer(logmel)
        if not self.trainable:
            h = jax.lax.stop_gradient(h)
        return nn.relu(nn.Dense(self.features, dtype=self.dtype, name="dense_0")(h.astype(self.dtype)))
