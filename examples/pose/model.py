"""The pose-regression CNN of the paper's Eq. 13, in Equinox.

Eq. 13 composes three convolutions (5x5, 5x5, 3x3), each followed by a ReLU
and 2x2 max-pooling, then fully connected layers 2048 -> ReLU -> 1024 ->
ReLU -> 51 (17 joints x 3 coordinates). The channel counts of the paper were
lost, so the presets below choose them:

========  =======  ===========  ============  ===========
preset    input    channels     dense         parameters
========  =======  ===========  ============  ===========
paper     128x128  32, 64, 128  2048, 1024    46,582,387
small     64x64    4, 8, 16     256, 128         144,411
tiny      32x32    4, 8, 8      32, 32             4,723
========  =======  ===========  ============  ===========

Convolutions use "valid" padding and pooling drops an odd last row/column,
so 128 -> 124 -> 62 -> 58 -> 29 -> 27 -> 13 (paper) and 64 -> 60 -> 30 ->
26 -> 13 -> 11 -> 5 (small). Each convolution + ReLU + pooling block is a
`ConvReluPool`, evaluated in a space-to-depth form that is exactly the same
function but runs about 1.5x faster on XLA's CPU backend.

Measured cost of one full Adam step (forward, backward and ``optax.adam``
update, jitted, float32, batch 128) with jax 0.10 on a 2-core x86 CPU shared
with other jobs (about one core free): `small` 0.13-0.16 s, `tiny` 0.02 s;
with channels 8, 16, 32 the 64x64 model takes 0.25-0.30 s. Most of the time
is the weight gradient of the first convolution. On a synthetic training set
of 4,096 examples, `small` reaches about 80 mm test MPJPE after 1,200 Adam
steps (learning rate 1e-3), against 205 mm for the mean pose.

Conventions: `PoseCNN.__call__` takes ONE image of shape (H, W, 3) (channels
last, as stored by the data sets), float in [0, 1] or uint8 in [0, 255], and
returns its (17, 3) joints in millimetres; batch it with ``jax.vmap`` (or
`predict`). The last layer's output is multiplied by ``output_scale``
(1000 mm by default), so the network works in metres internally, and the
last layer's weights start 10x smaller than Equinox's default with a zero
bias, so an untrained model predicts poses near the origin (the root) rather
than metres away. Initial
weights follow Equinox's default distribution but are drawn with numpy (see
`PoseCNN.__init__`), so building even the `paper` model takes well under a
second.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from pose.skeleton import NUM_JOINTS


@dataclasses.dataclass(frozen=True)
class PosePreset:
    """Sizes of a `PoseCNN`.

    Attributes:
      image_size: side of the square input image in pixels.
      channels: output channels of the three convolutions.
      kernel_sizes: kernel sizes of the three convolutions (Eq. 13: 5, 5, 3).
      hidden: widths of the two hidden fully connected layers (Eq. 13: 2048,
        1024).
    """

    image_size: int
    channels: tuple[int, int, int]
    hidden: tuple[int, int]
    kernel_sizes: tuple[int, int, int] = (5, 5, 3)

    @property
    def num_params(self) -> int:
        """Number of trainable scalars (weights and biases) of the model."""
        return count_params(self.image_size, self.channels, self.hidden, self.kernel_sizes)


def _feature_size(image_size: int, kernel_sizes: tuple[int, ...]) -> int:
    """Side of the feature map after the valid convolutions and 2x2 poolings."""
    side = image_size
    for k in kernel_sizes:
        side = (side - k + 1) // 2
    return side


def count_params(image_size: int, channels: tuple[int, ...], hidden: tuple[int, ...],
                 kernel_sizes: tuple[int, ...] = (5, 5, 3)) -> int:
    """Number of weights and biases of a `PoseCNN` with the given sizes.

    Args:
      image_size: side of the square input image.
      channels: output channels of the convolutions.
      hidden: widths of the hidden dense layers.
      kernel_sizes: kernel sizes of the convolutions.

    Returns:
      The parameter count.
    """
    total, c_in = 0, 3
    for c, k in zip(channels, kernel_sizes):
        total += c_in * c * k * k + c
        c_in = c
    width = c_in * _feature_size(image_size, kernel_sizes) ** 2
    for h in (*hidden, 3 * NUM_JOINTS):
        total += width * h + h
        width = h
    return total


PRESETS: dict[str, PosePreset] = {
    "paper": PosePreset(128, (32, 64, 128), (2048, 1024)),
    "small": PosePreset(64, (4, 8, 16), (256, 128)),
    "tiny": PosePreset(32, (4, 8, 8), (32, 32)),
}
"""Model sizes: ``paper`` (128x128 input, dense 2048/1024 as in Eq. 13),
``small`` (64x64, cheap enough for CPU experiments) and ``tiny`` (tests)."""


def _seed_from_key(key: jax.Array | int) -> list[int]:
    """Integers that seed numpy's generator from a JAX PRNG key or an int."""
    if isinstance(key, int):
        return [key]
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key).ravel()]


def _phase_kernel(weight: jax.Array) -> jax.Array:
    """A k x k kernel in the space-to-depth form used by `ConvReluPool`.

    For output phase (py, px), input phase (qy, qx) and block offset (by, bx),
    the tap is (dy, dx) = (2 by + qy - py, 2 bx + qx - px) when inside the
    kernel and 0 otherwise. Built from pads and reshapes only (no gather), so
    its derivative is as cheap to compile and run as the map itself.

    Args:
      weight: (k, k, in, out) kernel (HWIO), k odd.

    Returns:
      (nb, nb, 4 in, 4 out) kernel with nb = k // 2 + 1; input channels are
      ordered (qy, qx, in) and output channels (py, px, out).
    """
    k, _, cin, cout = weight.shape
    nb = k // 2 + 1
    phases = []
    for py in range(2):
        for px in range(2):
            padded = jnp.pad(weight, ((py, 2 * nb - k - py), (px, 2 * nb - k - px), (0, 0), (0, 0)))
            phases.append(padded.reshape(nb, 2, nb, 2, cin, cout))  # (by, qy, bx, qx, i, o)
    w = jnp.stack(phases, axis=-2)  # (by, qy, bx, qx, i, (py, px), o)
    return w.transpose(0, 2, 1, 3, 4, 5, 6).reshape(nb, nb, 4 * cin, 4 * cout)


def _patches(x: jax.Array, nb: int, ph: int, pw: int) -> jax.Array:
    """(n, H, W, c) -> (n, ph, pw, nb * nb * c): the nb x nb neighbourhoods as channels."""
    return jnp.concatenate([x[:, i:i + ph, j:j + pw] for i in range(nb) for j in range(nb)],
                           axis=-1)


@jax.custom_jvp
def _valid_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """Valid NHWC x HWIO convolution, differentiated as a product with input patches.

    The value is XLA's convolution. Its JVP (hence its VJP and every
    linearisation) is written as matrix products with the nb x nb input
    patches instead of convolutions: XLA's CPU backend runs the
    weight-gradient (and input-gradient) convolutions of a small CNN 10 to
    70 times slower inside a ``lax.while_loop`` than outside it (layout
    assignment in loop bodies, jax issue #12868), and every Krylov KKT solve
    applies the linearised network inside such a loop. Matrix products have
    no such penalty and cost about the same as the convolutions outside loops.
    """
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(_valid_conv.defjvp, symbolic_zeros=True)
def _valid_conv_jvp(primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _valid_conv(x, w)
    nb, _, cin, cout = w.shape
    _, ph, pw, _ = y.shape
    terms = []
    if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
        terms.append(_patches(dx, nb, ph, pw) @ w.reshape(nb * nb * cin, cout))
    if not isinstance(dw, jax.custom_derivatives.SymbolicZero):
        terms.append(_patches(x, nb, ph, pw) @ dw.reshape(nb * nb * cin, cout))
    dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
    return y, dy


class ConvReluPool(eqx.Module):
    """A valid k x k convolution, ReLU and 2x2 max-pooling: one conv block of Eq. 13.

    Computes ``maxpool2x2(relu(conv(x, weight) + bias))`` exactly (up to float
    rounding), with an odd last row/column dropped by the pooling. It is
    evaluated in space-to-depth form: the input's 2x2 pixel blocks become
    channels, the kernel becomes a (k//2+1) x (k//2+1) kernel producing the four
    pooling phases as channels, and the pooling is a max over those phases
    (ReLU and max commute, and the bias is the same for all phases). XLA's CPU
    convolutions (above all their weight gradients) are several times faster on
    this few-pixels-many-channels form than on a 3-channel image; the
    parameters are the plain kernel and bias, so parameter counts and
    initialisation are those of a standard convolution. Derivatives are
    matrix products with input patches (see `_valid_conv`), which stay fast
    inside the while loops of the Krylov KKT solvers.

    Attributes:
      weight: kernel (k, k, in_channels, out_channels) (HWIO).
      bias: (out_channels,).
    """

    weight: jax.Array
    bias: jax.Array

    def __check_init__(self):
        k = self.weight.shape[0]
        if self.weight.ndim != 4 or self.weight.shape[1] != k or k % 2 == 0:
            raise ValueError(f"ConvReluPool needs an odd square kernel (k, k, in, out), got "
                             f"weight of shape {self.weight.shape}.")

    def _structured_weight(self) -> jax.Array:
        return _phase_kernel(self.weight)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to one feature map (H, W, in_channels) -> (H', W', out_channels).

        H' = (H - k + 1) // 2, likewise W'.
        """
        k, _, cin, cout = self.weight.shape
        h, w, c = x.shape
        if c != cin:
            raise ValueError(f"ConvReluPool expects {cin} input channels, got input {x.shape}.")
        nb = k // 2 + 1
        ph, pw = (h - k + 1) // 2, (w - k + 1) // 2
        hb, wb = ph + nb - 1, pw + nb - 1  # 2x2 blocks of input needed
        x = x[: 2 * hb, : 2 * wb]
        x = x.reshape(hb, 2, wb, 2, cin).transpose(0, 2, 1, 3, 4).reshape(hb, wb, 4 * cin)
        y = _valid_conv(x[None], self._structured_weight().astype(x.dtype))[0]  # (ph, pw, 4 cout)
        y = jnp.max(y.reshape(ph, pw, 4, cout), axis=2) + self.bias
        return jax.nn.relu(y)

    def reference(self, x: jax.Array) -> jax.Array:
        """The same block computed directly (convolution, ReLU, pooling); for tests."""
        y = jax.lax.conv_general_dilated(
            x[None], self.weight.astype(x.dtype), (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + self.bias
        y = jax.nn.relu(y)
        h, w, c = y.shape
        y = y[: h - h % 2, : w - w % 2]
        return jnp.max(y.reshape(h // 2, 2, w // 2, 2, c), axis=(1, 3))


class PoseCNN(eqx.Module):
    """Image -> 17 3D joints regressor with the architecture of Eq. 13.

    Attributes:
      convs: the three convolution + ReLU + pooling blocks.
      dense: the three fully connected layers (two hidden, one output of 51).
      image_size: expected input side in pixels.
      output_scale: the last layer's output is multiplied by this (mm).

    References:
      Márquez-Neila, Salzmann, Fua (2017), Sec. 5, Eq. 13.
    """

    convs: tuple[ConvReluPool, ...]
    dense: tuple[eqx.nn.Linear, ...]
    image_size: int = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __init__(self, preset: PosePreset, *, key: jax.Array | int,
                 output_scale: float = 1000.0):
        """Initialises the weights like Equinox's layers; the last layer is scaled by 0.1.

        Weights and biases are drawn uniformly in +-1/sqrt(fan_in) (Equinox's
        default for ``Conv2d`` and ``Linear``), with numpy seeded by `key`:
        jax's threefry kernels take seconds to compile per shape on CPU, and
        this keeps building a model instantaneous. Under a transformation
        that traces `key` (``jax.vmap``, ``jax.jit``, ``eqx.filter_eval_shape``)
        the same distribution is drawn with ``jax.random`` instead. The last
        layer's weights are scaled by 0.1 and its bias is zero.

        Args:
          preset: the sizes, e.g. ``PRESETS["small"]``.
          key: a JAX PRNG key or an integer seed.
          output_scale: factor from network output to millimetres.
        """
        if len(preset.channels) != len(preset.kernel_sizes):
            raise ValueError(
                f"preset has {len(preset.channels)} channel counts but "
                f"{len(preset.kernel_sizes)} kernel sizes; give one kernel size per convolution.")
        side = _feature_size(preset.image_size, preset.kernel_sizes)
        if side < 1:
            raise ValueError(
                f"image_size {preset.image_size} is too small for kernels "
                f"{preset.kernel_sizes} with 2x2 pooling; use at least 32 pixels.")
        traced = isinstance(key, jax.core.Tracer)  # e.g. under jax.vmap over keys
        rng = None if traced else np.random.default_rng(_seed_from_key(key))
        layer_keys = iter(jax.random.split(key, 2 * (len(preset.channels) + len(preset.hidden) + 1))
                          if traced else [])

        def uniform(shape: tuple[int, ...], limit: float) -> jax.Array:
            if traced:
                return jax.random.uniform(next(layer_keys), shape, jnp.float32, -limit, limit)
            return jnp.asarray(rng.uniform(-limit, limit, shape), jnp.float32)

        def init(layer: eqx.Module, fan_in: int, scale: float = 1.0, zero_bias: bool = False):
            limit = 1.0 / math.sqrt(fan_in)
            weight = scale * uniform(layer.weight.shape, limit)
            bias = jnp.zeros(layer.bias.shape, jnp.float32) if zero_bias else uniform(
                layer.bias.shape, limit)
            return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))

        shape_only = jax.random.key(0) if isinstance(key, int) else key
        convs, c_in = [], 3
        for c, k in zip(preset.channels, preset.kernel_sizes):
            limit = 1.0 / math.sqrt(c_in * k * k)
            convs.append(ConvReluPool(uniform((k, k, c_in, c), limit), uniform((c,), limit)))
            c_in = c
        dense, width = [], c_in * side * side
        widths = (*preset.hidden, 3 * NUM_JOINTS)
        for i, h in enumerate(widths):
            layer = eqx.filter_eval_shape(eqx.nn.Linear, width, h, key=shape_only)
            last = i == len(widths) - 1
            dense.append(init(layer, width, 0.1 if last else 1.0, zero_bias=last))
            width = h
        self.convs = tuple(convs)
        self.dense = tuple(dense)
        self.image_size = preset.image_size
        self.output_scale = float(output_scale)

    def __call__(self, image: ArrayLike) -> jax.Array:
        """Predicts the joints of one image (Eq. 13).

        Args:
          image: (H, W, 3) RGB, float in [0, 1] or uint8, H = W = image_size.

        Returns:
          (17, 3) joints in millimetres (root-relative camera coordinates when
          trained on this package's data sets).
        """
        image = jnp.asarray(image)
        expected = (self.image_size, self.image_size, 3)
        if image.shape != expected:
            hint = (" (a batch? map over it with jax.vmap(model) or pose.model.predict)"
                    if image.ndim == 4 else "")
            raise ValueError(f"PoseCNN expects one image of shape {expected} (H, W, RGB), "
                             f"got {image.shape}{hint}.")
        x = image.astype(jnp.float32) / 255.0 if image.dtype == jnp.uint8 else image
        x = x - 0.5  # centred, (H, W, 3)
        for block in self.convs:
            x = block(x)
        x = x.reshape(-1)
        for layer in self.dense[:-1]:
            x = jax.nn.relu(layer(x))
        return (self.output_scale * self.dense[-1](x)).reshape(NUM_JOINTS, 3)


def make_model(preset: str | PosePreset = "small", key: jax.Array | int = 0, *,
               output_scale: float = 1000.0) -> PoseCNN:
    """Builds a `PoseCNN` from a preset name or a `PosePreset`.

    Args:
      preset: ``"paper"``, ``"small"``, ``"tiny"`` (see `PRESETS`) or a
        `PosePreset`.
      key: a JAX PRNG key or an integer seed.
      output_scale: factor from network output to millimetres.

    Returns:
      The initialised model. Use ``eqx.partition(model, eqx.is_array)`` to
      split it into trainable arrays and static structure for optax.

    Example:
      >>> import jax
      >>> from pose.model import make_model
      >>> model = make_model("tiny", jax.random.key(0))
      >>> model(jax.numpy.zeros((32, 32, 3))).shape
      (17, 3)
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)} "
                             "or pass a PosePreset.")
        preset = PRESETS[preset]
    return PoseCNN(preset, key=key, output_scale=output_scale)


def num_params(model: eqx.Module) -> int:
    """Number of scalars in the arrays of `model` (its trainable parameters).

    Also counts a model built under ``eqx.filter_eval_shape``, whose arrays
    are ``jax.ShapeDtypeStruct``s, so large presets can be sized without
    allocating them.
    """
    leaves = jax.tree_util.tree_leaves(model)
    return sum(math.prod(leaf.shape) for leaf in leaves
               if eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct))


def predict(model: PoseCNN, images: ArrayLike) -> jax.Array:
    """Joints (N, 17, 3) in mm for a batch of images (N, H, W, 3); ``vmap`` of the model."""
    return jax.vmap(model)(images)
