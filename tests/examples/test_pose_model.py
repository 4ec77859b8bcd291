"""The Eq. 13 CNN: shapes, parameter counts, input conventions, one optax step."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pose.model import PRESETS, ConvReluPool, PosePreset, make_model, num_params, predict


def _expected_params(size: int, channels, hidden, kernels=(5, 5, 3)) -> int:
    """Parameter count written out layer by layer (valid convs, floor 2x2 pooling)."""
    total, c_in, side = 0, 3, size
    for c, k in zip(channels, kernels):
        total += k * k * c_in * c + c
        side = (side - (k - 1)) // 2
        c_in = c
    widths = [side * side * c_in, *hidden, 51]
    total += sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    return total


def test_paper_preset_follows_eq13():
    p = PRESETS["paper"]
    assert p.image_size == 128 and p.kernel_sizes == (5, 5, 3) and p.hidden == (2048, 1024)
    # 128 -> 124 -> 62 -> 58 -> 29 -> 27 -> 13, 128 channels into the 2048-wide layer.
    assert p.num_params == _expected_params(128, p.channels, p.hidden) == 46_582_387
    model = eqx.filter_eval_shape(make_model, "paper", jax.random.key(0))  # no allocation
    assert model.dense[0].weight.shape == (2048, 13 * 13 * 128)
    assert num_params(model) == p.num_params


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_presets_output_shape_and_parameter_count(name):
    preset = PRESETS[name]
    model = make_model(name, jax.random.key(1))
    assert num_params(model) == preset.num_params
    assert preset.num_params == _expected_params(preset.image_size, preset.channels, preset.hidden)
    out = eqx.filter_jit(model)(jnp.zeros((preset.image_size, preset.image_size, 3)))
    assert out.shape == (17, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize("k, size, cin, cout", [(5, 30, 3, 4), (3, 13, 8, 16), (5, 17, 3, 2),
                                                (1, 9, 2, 2)])
def test_conv_relu_pool_equals_direct_convolution(k, size, cin, cout):
    rng = np.random.default_rng(k + size)
    block = ConvReluPool(jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32),
                         jnp.asarray(rng.normal(size=(cout,)), jnp.float32))
    x = jnp.asarray(rng.normal(size=(3, size, size + 1, cin)), jnp.float32)
    # Independent reference: explicit loops over the output pixels (numpy).
    xn, wn = np.asarray(x, np.float64), np.asarray(block.weight, np.float64)
    bn = np.asarray(block.bias, np.float64)
    conv = np.zeros((3, size - k + 1, size + 2 - k, cout))
    for i in range(conv.shape[1]):
        for j in range(conv.shape[2]):
            conv[:, i, j] = np.einsum("nhwc,hwco->no", xn[:, i:i + k, j:j + k], wn) + bn
    conv = np.maximum(conv, 0)
    h, w = conv.shape[1] // 2, conv.shape[2] // 2
    pooled = conv[:, :2 * h, :2 * w].reshape(3, h, 2, w, 2, cout).max(axis=(2, 4))

    @eqx.filter_jit
    def outputs_and_grads(b, x):
        def loss(b, fn):
            return jnp.sum(jax.vmap(fn(b))(x) ** 2)
        fast, slow = (lambda b: b), (lambda b: b.reference)
        return (jax.vmap(b)(x), jax.vmap(b.reference)(x),
                jax.grad(loss)(b, fast).weight, jax.grad(loss)(b, slow).weight)

    got, ref, grad_fast, grad_ref = outputs_and_grads(block, x)
    np.testing.assert_allclose(got, pooled, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ref, pooled, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad_fast, grad_ref, rtol=1e-3, atol=1e-3)


def test_conv_relu_pool_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd"):
        ConvReluPool(jnp.zeros((4, 4, 3, 2)), jnp.zeros(2))


def test_documented_parameter_counts():
    assert PRESETS["small"].num_params == 144_411
    assert PRESETS["tiny"].num_params == 4_723


def test_batching_uint8_input_and_initial_scale():
    model = make_model("tiny", 0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    batched = eqx.filter_jit(predict)(model, jnp.asarray(images))
    assert batched.shape == (5, 17, 3)
    call = eqx.filter_jit(lambda m, x: m(x))
    single = jnp.stack([call(model, im.astype(np.float32) / 255.0) for im in images])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(eqx.filter_jit(predict)(model, images), batched, rtol=1e-4,
                               atol=1e-2)
    # Outputs are in mm; an untrained model predicts poses within ~1 m of the root.
    assert 0 < float(jnp.max(jnp.abs(batched))) < 1000


def test_rejects_wrong_input_shape():
    model = make_model("tiny", 0)
    with pytest.raises(ValueError, match=r"jax.vmap"):
        model(jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        model(jnp.zeros((3, 32, 32)))
    with pytest.raises(ValueError, match="Unknown preset"):
        make_model("huge", 0)
    with pytest.raises(ValueError, match="too small"):
        make_model(PosePreset(16, (4, 4, 4), (8, 8)), 0)


def test_adam_step_on_partitioned_model_reduces_eq14_loss():
    model = make_model("tiny", jax.random.key(2))
    params, static = eqx.partition(model, eqx.is_array)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(params))
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.random((16, 32, 32, 3), dtype=np.float32))
    targets = jnp.asarray(rng.normal(scale=300.0, size=(16, 17, 3)).astype(np.float32))

    def loss(p):  # Eq. 14: squared distance between true and predicted joints
        pred = jax.vmap(eqx.combine(p, static))(images)
        return jnp.mean(jnp.sum((pred - targets) ** 2, axis=(-2, -1)))

    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    first = None
    for _ in range(20):
        params, state, value = step(params, state)
        first = value if first is None else first
    assert math.isfinite(float(value)) and float(loss(params)) < float(first)


@pytest.mark.parametrize("nb, size, cin, cout", [(3, 9, 12, 8), (2, 7, 4, 5), (1, 5, 3, 2)])
def test_valid_conv_and_its_derivatives_match_lax_convolution_in_float64(nb, size, cin, cout):
    """`_valid_conv` (patch-matmul JVP) against ``lax.conv_general_dilated`` (float64).

    The value, the JVP in x and w together and separately, and reverse-mode
    gradients (built from the JVP by transposition) must all equal those of
    XLA's convolution to float64 round-off.
    """
    from pose.model import _valid_conv

    def reference(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    with jax.enable_x64(True):
        rng = np.random.default_rng(nb * 100 + size)
        x, dx = (jnp.asarray(rng.normal(size=(2, size, size + 2, cin))) for _ in range(2))
        w, dw = (jnp.asarray(rng.normal(size=(nb, nb, cin, cout))) for _ in range(2))
        assert x.dtype == jnp.float64
        tol = dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_valid_conv(x, w), reference(x, w), **tol)
        for tangents in ((dx, dw), (dx, jnp.zeros_like(w)), (jnp.zeros_like(x), dw)):
            _, got = jax.jvp(_valid_conv, (x, w), tangents)
            _, want = jax.jvp(reference, (x, w), tangents)
            np.testing.assert_allclose(got, want, **tol)
        # Only one argument differentiated: the other tangent is a symbolic zero.
        _, got = jax.jvp(lambda w: _valid_conv(x, w), (w,), (dw,))
        _, want = jax.jvp(lambda w: reference(x, w), (w,), (dw,))
        np.testing.assert_allclose(got, want, **tol)
        cot = jnp.asarray(rng.normal(size=reference(x, w).shape))

        def loss(fn):
            return lambda x, w: jnp.sum(jnp.sin(fn(x, w)) * cot)

        got = jax.jit(jax.grad(loss(_valid_conv), argnums=(0, 1)))(x, w)
        want = jax.grad(loss(reference), argnums=(0, 1))(x, w)
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, **tol)
        # Second order (forward over reverse), as Gauss-Newton-style code may use.
        hvp = jax.jvp(jax.grad(lambda w: loss(_valid_conv)(x, w)), (w,), (dw,))[1]
        hvp_ref = jax.jvp(jax.grad(lambda w: loss(reference)(x, w)), (w,), (dw,))[1]
        np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-10, atol=1e-10)
