"""Tests of kktopt.outputs: the per-sample output projection and its implicit gradient.

References are closed forms (affine projection, sphere, box clip), their
closed-form Jacobians, central finite differences in float64, and the
first-order (KKT) conditions checked with an independent numpy Jacobian.
"""

import doctest

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kktopt import outputs
from kktopt.outputs import OutputProjection, ProjectedModel, ProjectionStatus, project_outputs

DTYPES = [np.float32, np.float64]

# 17-joint Human3.6M skeleton: the six (a, b, c, d) quadruples of the paper's Table 2
# (constraint j: ||y[a] - y[b]|| - ||y[c] - y[d]|| = 0, left bone minus right bone).
SYMMETRY = np.array([
    (11, 12, 14, 15),  # upper arms
    (12, 13, 15, 16),  # forearms
    (4, 5, 1, 2),  # thighs
    (5, 6, 2, 3),  # calves
    (8, 11, 8, 14),  # thorax to shoulders
    (0, 4, 0, 1),  # pelvis to hips
])
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)


def _safe_norm(x):
    sq = jnp.sum(x * x, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1)), 0)


def bone_symmetry(y):
    """Eq. 15 on one skeleton (17, 3)."""
    return (_safe_norm(y[SYMMETRY[:, 0]] - y[SYMMETRY[:, 1]])
            - _safe_norm(y[SYMMETRY[:, 2]] - y[SYMMETRY[:, 3]]))


def random_skeletons(rng, batch, noise):
    """Random symmetric skeletons (bone lengths 100-450 mm, random directions) plus joint noise."""
    lengths = rng.uniform(100, 450, size=(batch, 17))
    for a, b, c, d in SYMMETRY:  # make left and right equal, then perturb the joints
        lengths[:, b] = lengths[:, d]
    joints = np.zeros((batch, 17, 3))
    for j, p in enumerate(PARENTS):
        if p >= 0:
            u = rng.normal(size=(batch, 3))
            joints[:, j] = joints[:, p] + lengths[:, j, None] * u / np.linalg.norm(u, axis=1, keepdims=True)
    return joints + noise * rng.normal(size=joints.shape)


def tols(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)


# float64 variants are in the slow run (each call compiles a while loop: seconds on CI cores);
# float64 accuracy stays in the default run through the x64 tests below.
@pytest.fixture(params=[np.float32, pytest.param(np.float64, marks=pytest.mark.slow)],
                ids=["float32", "float64"])
def dtype(request):
    with jax.enable_x64(request.param == np.float64):
        yield request.param


def affine_problem(dtype, seed=0, batch=5, n=7, m=3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, n))
    b = rng.normal(size=m)
    y_hat = rng.normal(size=(batch, n)) * 3
    weight = rng.uniform(0.5, 2.0, size=n)
    return a, b, y_hat, weight


def affine_projection(a, b, y_hat, weight):
    """Closed form: y = y_hat - W^-1 A^T (A W^-1 A^T)^-1 (A y_hat - b) and its Jacobian."""
    winv = np.diag(1 / weight)
    gram = a @ winv @ a.T
    y = y_hat - (winv @ a.T @ np.linalg.solve(gram, (y_hat @ a.T - b).T)).T
    jac = np.eye(a.shape[1]) - winv @ a.T @ np.linalg.solve(gram, a)
    return y, jac


def test_affine_equalities_match_closed_form(dtype):
    a, b, y_hat, weight = affine_problem(dtype)
    y_ref, jac_ref = affine_projection(a, b, y_hat, weight)
    aj, bj = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    fn = lambda y: aj @ y - bj
    y, info = project_outputs(fn, jnp.asarray(y_hat, dtype), weight=jnp.asarray(weight, dtype))
    assert y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **tols(dtype))
    assert info.converged.all()
    assert (info.iterations == 1).all()  # linear constraints: one Gauss-Newton step is exact
    jac = jax.jacrev(lambda v: project_outputs(fn, v[None], weight=jnp.asarray(weight, dtype))[0][0])(
        jnp.asarray(y_hat[0], dtype))
    np.testing.assert_allclose(jac, jac_ref, **tols(dtype))


def test_sphere_matches_closed_form_and_jacobian(dtype):
    rng = np.random.default_rng(1)
    r = 2.5
    y_hat = rng.normal(size=(6, 4)) * 3
    fn = lambda y: jnp.linalg.norm(y, keepdims=True) - r
    y, info = jax.jit(lambda v: project_outputs(fn, v))(jnp.asarray(y_hat, dtype))
    norms = np.linalg.norm(y_hat, axis=1, keepdims=True)
    np.testing.assert_allclose(y, r * y_hat / norms, **tols(dtype))
    assert info.converged.all()
    # d(r y/||y||)/dy = r/||y|| (I - n n^T)
    for i in range(2):
        nvec = y_hat[i] / norms[i]
        jac_ref = r / norms[i] * (np.eye(4) - np.outer(nvec, nvec))
        jac = jax.jacrev(lambda v: project_outputs(fn, v[None])[0][0])(jnp.asarray(y_hat[i], dtype))
        np.testing.assert_allclose(jac, jac_ref, **tols(dtype))


def test_box_inequalities_are_a_clip(dtype):
    rng = np.random.default_rng(2)
    lo, hi = -1.0, 0.5
    y_hat = rng.normal(size=(8, 6)) * 2
    ineq = lambda y: jnp.concatenate([y - hi, lo - y])
    y, info = project_outputs(None, jnp.asarray(y_hat, dtype), inequality_fn=ineq)
    np.testing.assert_allclose(y, np.clip(y_hat, lo, hi), **tols(dtype))
    assert info.converged.all()
    np.testing.assert_array_equal(info.num_active, np.sum((y_hat > hi) | (y_hat < lo), axis=1))
    mu = np.asarray(info.multipliers)
    assert (mu >= -1e-6).all()  # dual feasibility
    # Jacobian of the clip: 1 on free coordinates, 0 on clipped ones
    jac = jax.jacrev(lambda v: project_outputs(None, v[None], inequality_fn=ineq)[0][0])(
        jnp.asarray(y_hat[0], dtype))
    np.testing.assert_allclose(jac, np.diag(((y_hat[0] < hi) & (y_hat[0] > lo)).astype(float)),
                               **tols(dtype))


def test_linear_equalities_plus_box(x64):
    """An affine equality with a box: the KKT point is checked against scipy's QP-free SLSQP."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    n = 6
    a = rng.normal(size=(2, n))
    b = a @ rng.uniform(-0.4, 0.4, size=n)  # feasible with the box
    y_hat = rng.normal(size=(3, n))
    ineq = lambda y: jnp.concatenate([y - 0.5, -0.5 - y])
    y, info = project_outputs(lambda y: jnp.asarray(a) @ y - jnp.asarray(b), jnp.asarray(y_hat),
                              inequality_fn=ineq)
    assert info.converged.all()
    for i in range(3):
        ref = scipy_optimize.minimize(
            lambda v: 0.5 * np.sum((v - y_hat[i]) ** 2), np.clip(y_hat[i], -0.5, 0.5),
            jac=lambda v: v - y_hat[i], method="SLSQP", bounds=[(-0.5, 0.5)] * n,
            constraints=[{"type": "eq", "fun": lambda v: a @ v - b, "jac": lambda v: a}],
            options=dict(ftol=1e-14, maxiter=500))
        np.testing.assert_allclose(y[i], ref.x, atol=1e-7)


@pytest.mark.slow
def test_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(4)
    y_hat = random_skeletons(rng, 2, 20.0)
    weight = rng.uniform(0.5, 2.0, size=(17, 3))
    cot = rng.normal(size=y_hat.shape)

    @jax.jit
    def loss(v, w):
        y, _ = project_outputs(bone_symmetry, v, weight=w)
        return jnp.sum(jnp.asarray(cot) * y)

    g_y, g_w = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(y_hat), jnp.asarray(weight))
    h = 1e-5
    for _ in range(3):
        dv, dw = rng.normal(size=y_hat.shape), rng.normal(size=weight.shape)
        fd = (loss(jnp.asarray(y_hat + h * dv), jnp.asarray(weight + h * dw))
              - loss(jnp.asarray(y_hat - h * dv), jnp.asarray(weight - h * dw))) / (2 * h)
        np.testing.assert_allclose(np.sum(g_y * dv) + np.sum(g_w * dw), fd, rtol=1e-6, atol=1e-6)


def test_gradient_through_closed_over_constraint_parameters(x64):
    """Arrays the constraint closes over (here under jit, as traced values) get gradients too."""
    rng = np.random.default_rng(5)
    a, b, y_hat, _ = affine_problem(np.float64, seed=5, batch=3, n=5, m=2)

    @jax.jit
    def loss(b):
        y, _ = project_outputs(lambda v: jnp.asarray(a) @ v - b, jnp.asarray(y_hat))
        return jnp.sum(y**2)

    g = jax.grad(loss)(jnp.asarray(b))
    ref = lambda b: np.sum(affine_projection(a, b, y_hat, np.ones(5))[0] ** 2)
    fd = [(ref(b + 1e-6 * e) - ref(b - 1e-6 * e)) / 2e-6 for e in np.eye(2)]
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    del rng


def test_bone_symmetry_kkt_conditions(dtype):
    rng = np.random.default_rng(6)
    y_hat = jnp.asarray(random_skeletons(rng, 64, 25.0), dtype)
    project = jax.jit(lambda v: project_outputs(bone_symmetry, v))
    y, info = project(y_hat)
    assert info.converged.all(), info.describe()
    c = np.asarray(jax.vmap(bone_symmetry)(y), np.float64)
    limit = 0.05 if dtype == np.float32 else 1e-6  # mm; bones are 100-450 mm
    assert np.abs(c).max() < limit
    # first-order conditions: y - y_hat = -J^T lambda with J from numpy-evaluated derivatives
    y64 = np.asarray(y, np.float64)
    for i in range(4):
        jac = np.zeros((6, 51))
        for j, (a, b, cc, d) in enumerate(SYMMETRY):
            for (p, q), sign in (((a, b), 1.0), ((cc, d), -1.0)):
                u = (y64[i, p] - y64[i, q]) / np.linalg.norm(y64[i, p] - y64[i, q])
                jac[j, 3 * p:3 * p + 3] += sign * u
                jac[j, 3 * q:3 * q + 3] -= sign * u
        lam = np.asarray(info.multipliers[i], np.float64)
        residual = (y64[i] - np.asarray(y_hat[i], np.float64)).ravel() + jac.T @ lam
        scale = np.abs(y64[i] - np.asarray(y_hat[i])).max()
        assert np.abs(residual).max() <= (2e-3 if dtype == np.float32 else 1e-8) * max(scale, 1.0)
        # a local minimiser: other nearby feasible points are farther (projected random moves)
    d0 = np.sum((np.asarray(y) - np.asarray(y_hat)) ** 2, axis=(1, 2))
    moved = y + 2.0 * jnp.asarray(rng.normal(size=y.shape), dtype)
    y2, _ = project(moved)
    d2 = np.sum((np.asarray(y2) - np.asarray(y_hat)) ** 2, axis=(1, 2))
    assert np.all(d2 >= d0 * (1 - 1e-4) - 1e-3)


def test_feasible_input_is_returned_unchanged(dtype):
    rng = np.random.default_rng(7)
    y_hat = jnp.asarray(random_skeletons(rng, 4, 0.0), dtype)
    y, info = project_outputs(bone_symmetry, y_hat)
    np.testing.assert_array_equal(y, y_hat)
    assert (info.iterations == 0).all() and info.converged.all()


def test_degenerate_and_nonfinite_inputs(dtype):
    y_hat = jnp.zeros((4, 17, 3), dtype)
    y_hat = y_hat.at[1].set(1.0)  # all joints at one point: every bone has length 0
    y_hat = y_hat.at[2, 12].set(50.0)  # only the left upper arm and forearm have length
    y_hat = y_hat.at[3, 5].set(jnp.nan)
    def loss(v):  # outputs, info and a gradient from one compiled program
        y, info = project_outputs(bone_symmetry, v)
        return jnp.sum(y[:3] ** 2), (y, info)

    (_, (y, info)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(y_hat)
    status = np.asarray(info.status)
    assert status[0] == status[1] == ProjectionStatus.CONVERGED
    np.testing.assert_array_equal(y[:2], y_hat[:2])
    assert status[3] == ProjectionStatus.NONFINITE
    assert np.isfinite(np.asarray(y[:3])).all()
    assert np.isfinite(np.asarray(info.violation[:3])).all()
    # the degenerate sample is reported honestly: converged only if Eq. 15 holds
    if status[2] == ProjectionStatus.CONVERGED:
        assert np.abs(np.asarray(bone_symmetry(y[2]))).max() < 1e-2
    assert np.isfinite(np.asarray(grad[:3])).all()
    assert "NONFINITE" in info.describe()


def test_incompatible_constraints_are_reported_infeasible(dtype):
    fn = lambda y: jnp.stack([y[0] - 1.0, y[0] - 2.0])
    y, info = project_outputs(fn, jnp.zeros((2, 3), dtype))
    assert (np.asarray(info.status) == ProjectionStatus.INFEASIBLE).all()
    np.testing.assert_allclose(y[:, 0], 1.5, rtol=1e-5)  # least-squares point of the two
    assert "cannot be met" in outputs.status_message(int(info.status[0]))


def test_iteration_limit_is_reported(dtype):
    y_hat = jnp.asarray(random_skeletons(np.random.default_rng(8), 4, 60.0), dtype)
    _, info = project_outputs(bone_symmetry, y_hat, max_iter=1)
    assert (np.asarray(info.status) == ProjectionStatus.MAX_ITER).all()
    assert (info.iterations == 1).all()


@pytest.mark.slow
def test_vmap_jit_and_layers_agree(dtype):
    rng = np.random.default_rng(9)
    y_hat = jnp.asarray(random_skeletons(rng, 6, 15.0), dtype)
    y_ref, _ = project_outputs(bone_symmetry, y_hat)
    layer = OutputProjection(bone_symmetry)
    np.testing.assert_allclose(jax.jit(jax.vmap(layer))(y_hat), y_ref, **tols(dtype))
    # vmap over an extra axis of a batched call
    y2 = jax.vmap(lambda v: project_outputs(bone_symmetry, v)[0])(y_hat.reshape(2, 3, 17, 3))
    np.testing.assert_allclose(y2.reshape(y_hat.shape), y_ref, **tols(dtype))
    y1, info1 = layer.with_info(y_hat[0])
    assert y1.shape == (17, 3) and info1.status.shape == ()


def test_projected_model_trains_through_the_layer(x64):
    """A loss on projected outputs: the gradient reaches the model's weights, matches FD."""
    net = eqx.nn.Linear(4, 3, key=jax.random.key(0))
    net = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, net)
    pm = ProjectedModel(net, lambda y: jnp.sum(y**2, keepdims=True) - 1.0)
    x = jnp.asarray(np.random.default_rng(10).normal(size=(5, 4)))
    target = jnp.asarray(np.random.default_rng(11).normal(size=(5, 3)))

    @eqx.filter_jit
    def loss(model):
        return jnp.mean((jax.vmap(model)(x) - target) ** 2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(pm)
    e = np.zeros(net.weight.shape)
    e[1, 2] = 1.0
    shift = lambda h: eqx.tree_at(lambda m: m.model.weight, pm, pm.model.weight + h * e)
    fd = (loss(shift(1e-6)) - loss(shift(-1e-6))) / 2e-6
    np.testing.assert_allclose(grads.model.weight[1, 2], fd, rtol=1e-6)
    y = eqx.filter_jit(lambda m, xb: jax.vmap(m)(xb))(pm, x)
    np.testing.assert_allclose(jnp.sum(y**2, axis=1), 1.0, rtol=1e-9)


def test_bad_input_errors_name_the_fix():
    with pytest.raises(ValueError, match="batch axis"):
        project_outputs(lambda y: y, jnp.float32(1.0))
    with pytest.raises(ValueError, match="ONE sample"):
        project_outputs(lambda y: y @ jnp.ones(7), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="positive"):
        project_outputs(lambda y: jnp.sum(y, keepdims=True), jnp.ones((2, 3)), weight=-jnp.ones(3))
    with pytest.raises(ValueError, match="broadcast"):
        project_outputs(lambda y: jnp.sum(y, keepdims=True), jnp.ones((2, 3)), weight=jnp.ones(4))
    with pytest.raises(ValueError, match="give constraint_fn"):
        project_outputs(None, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="floating"):
        project_outputs(lambda y: y, jnp.ones((2, 3), jnp.int32))


@pytest.mark.slow  # the default run executes these docstrings already (--doctest-modules)
@pytest.mark.parametrize("module", [outputs._project, outputs._layer])
def test_docstring_examples(module):
    import kktopt

    if not hasattr(kktopt, "project_outputs"):
        pytest.skip("kktopt does not export the outputs names yet")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# --- bounds by elimination (lower/upper) ---------------------------------------------------------

BOX = (-0.5, 0.5)


def _box_problem(seed=12, batch=4, n=7, m=2):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, n))
    b = a @ rng.uniform(-0.4, 0.4, size=n)  # the set meets the box
    return a, b, rng.normal(size=(batch, n)), rng.uniform(0.5, 2.0, size=n)


def _slsqp(y_hat, weight, a, b, bounds, eq=None, eq_jac=None, ftol=1e-15):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    eq = eq or (lambda v: a @ v - b)
    eq_jac = eq_jac or (lambda v: a)
    ref = scipy_optimize.minimize(
        lambda v: 0.5 * np.sum(weight * (v - y_hat) ** 2), np.clip(y_hat, *bounds),
        jac=lambda v: weight * (v - y_hat), method="SLSQP", bounds=[bounds] * y_hat.size,
        constraints=[{"type": "eq", "fun": eq, "jac": eq_jac}], options=dict(ftol=ftol, maxiter=1000))
    assert ref.success, ref.message
    return ref.x


def _free_set_jacobian(y, a, weight, bounds):
    """Closed form on the free set F: dy/dy_hat = I_F - W_F^-1 A_F^T (A_F W_F^-1 A_F^T)^-1 A_F."""
    f = ((y > bounds[0]) & (y < bounds[1])).astype(float)
    winv = np.diag(f / weight)
    return np.diag(f) - winv @ a.T @ np.linalg.pinv(a @ winv @ a.T) @ a @ np.diag(f)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_bounds_alone_are_an_exact_clip(dtype):
    with jax.enable_x64(dtype == np.float64):
        rng = np.random.default_rng(13)
        y_hat = jnp.asarray(rng.normal(size=(8, 3, 2)) * 2, dtype)
        upper = jnp.asarray(rng.uniform(0.2, 1.0, size=(3, 2)), dtype)  # one sample's shape
        y, info = project_outputs(None, y_hat, lower=-1.0, upper=upper, weight=jnp.full((3, 2), 3.0, dtype))
        np.testing.assert_array_equal(y, np.clip(y_hat, -1.0, upper))
        assert y.dtype == dtype and info.converged.all()
        np.testing.assert_array_equal(info.num_active, np.sum((y_hat >= upper) | (y_hat <= -1), axis=(1, 2)))
        jac = jax.jacrev(lambda v: project_outputs(None, v[None], lower=-1.0, upper=upper)[0][0])(y_hat[0])
        free = ((y_hat[0] > -1) & (y_hat[0] < upper)).astype(dtype).ravel()
        np.testing.assert_array_equal(jac.reshape(6, 6), np.diag(free))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_equalities_with_bounds_match_scipy_and_closed_form_jacobian(dtype):
    """Elimination path: the KKT point against SLSQP, the layer's Jacobian against the free-set formula."""
    a, b, y_hat, weight = _box_problem()
    with jax.enable_x64(dtype == np.float64):
        aj, bj, wj = (jnp.asarray(v, dtype) for v in (a, b, weight))
        layer = jax.jit(lambda v: project_outputs(lambda y: aj @ y - bj, v, weight=wj, lower=BOX[0],
                                                  upper=BOX[1]))
        y, info = layer(jnp.asarray(y_hat, dtype))
        jacs = jax.jit(jax.vmap(jax.jacrev(lambda v: layer(v[None])[0][0])))(jnp.asarray(y_hat, dtype))
    assert info.converged.all(), info.describe()
    assert y.dtype == dtype
    y = np.asarray(y, np.float64)
    assert (y >= BOX[0]).all() and (y <= BOX[1]).all()  # bounds hold exactly, in any dtype
    close = dict(atol=2e-5) if dtype == np.float32 else dict(atol=1e-10)
    for i in range(len(y_hat)):
        np.testing.assert_allclose(y[i], _slsqp(y_hat[i], weight, a, b, BOX), atol=2e-5 if dtype == np.float32 else 1e-7)
        # exact reference on the found active set: the reduced QP's solution, and the bound
        # multipliers' signs (z = -(W (y - y_hat) + A^T lambda) >= 0 at upper, <= 0 at lower)
        f = (y[i] > BOX[0]) & (y[i] < BOX[1])
        fixed = np.where(f, 0.0, y[i])
        winv = np.where(f, 1 / weight, 0.0)
        lam = np.linalg.solve((a * winv) @ a.T, a @ (np.where(f, y_hat[i], 0.0) + fixed) - b)
        exact = np.where(f, y_hat[i] - winv * (a.T @ lam), fixed)
        np.testing.assert_allclose(y[i], exact, **close)
        z = -(weight * (exact - y_hat[i]) + a.T @ lam)
        assert (z[y[i] == BOX[1]] >= -1e-6).all() and (z[y[i] == BOX[0]] <= 1e-6).all()
        np.testing.assert_allclose(jacs[i], _free_set_jacobian(y[i], a, weight, BOX), **close)
    assert (info.num_active > 0).all()  # the box binds: the test exercises elimination


def test_bounds_gradient_of_closed_over_rhs_matches_finite_differences(x64):
    a, b, y_hat, weight = _box_problem(seed=14)
    aj, wj, yj = jnp.asarray(a), jnp.asarray(weight), jnp.asarray(y_hat)

    @jax.jit
    def loss(bb):
        y, _ = project_outputs(lambda v: aj @ v - bb, yj, weight=wj, lower=BOX[0], upper=BOX[1])
        return jnp.sum(jnp.sin(3 * y))

    g = jax.grad(loss)(jnp.asarray(b))
    fd = [(loss(jnp.asarray(b + 1e-6 * e)) - loss(jnp.asarray(b - 1e-6 * e))) / 2e-6 for e in np.eye(2)]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def _sphere_box(dtype, tol=None):
    fn = lambda y: jnp.sum(y**2, keepdims=True) - 1.0
    rng = np.random.default_rng(15)
    y_hat = rng.normal(size=(4, 5))
    y_hat = 1.3 * y_hat / np.linalg.norm(y_hat, axis=1, keepdims=True)  # moderate correction
    layer = jax.jit(lambda v: project_outputs(fn, v, lower=-0.6, upper=0.7, tol=tol))
    return fn, y_hat, layer


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
def test_nonlinear_equality_with_bounds_matches_scipy(dtype):
    with jax.enable_x64(dtype == np.float64):
        _, y_hat, layer = _sphere_box(dtype)
        y, info = layer(jnp.asarray(y_hat, dtype))
    assert info.converged.all(), info.describe()
    y = np.asarray(y, np.float64)
    lo, hi = float(np.asarray(-0.6, dtype)), float(np.asarray(0.7, dtype))  # the bounds in this dtype
    assert (y >= lo).all() and (y <= hi).all() and (info.num_active > 0).any()
    close = dict(atol=2e-4) if dtype == np.float32 else dict(atol=1e-7)
    np.testing.assert_allclose(np.sum(y**2, axis=1), 1.0, **close)
    for i in range(len(y_hat)):
        ref = _slsqp(y_hat[i], np.ones(5), None, None, (-0.6, 0.7), eq=lambda v: np.array([v @ v - 1.0]),
                     eq_jac=lambda v: 2 * v[None], ftol=1e-12)
        np.testing.assert_allclose(y[i], ref, **close)


def test_nonlinear_equality_with_bounds_gradient_matches_finite_differences(x64):
    _, y_hat, layer = _sphere_box(np.float64, tol=1e-14)  # FD of a solve: solve to rounding level
    cot = np.random.default_rng(16).normal(size=y_hat.shape)
    loss = jax.jit(lambda v: jnp.sum(jnp.asarray(cot) * layer(v)[0]))
    g = jax.grad(loss)(jnp.asarray(y_hat))
    rng = np.random.default_rng(17)
    for _ in range(2):
        d = rng.normal(size=y_hat.shape)
        fd = (loss(jnp.asarray(y_hat + 1e-6 * d)) - loss(jnp.asarray(y_hat - 1e-6 * d))) / 2e-6
        np.testing.assert_allclose(np.sum(np.asarray(g) * d), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_bounds_as_inequality_rows_agree_with_elimination(x64):
    """With inequality_fn the bounds join its rows (dense active set); same KKT point."""
    a, b, y_hat, weight = _box_problem(seed=18, batch=3)
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    kw = dict(weight=jnp.asarray(weight), lower=BOX[0], upper=BOX[1])
    y1, i1 = project_outputs(lambda y: aj @ y - bj, jnp.asarray(y_hat), **kw)
    y2, i2 = project_outputs(lambda y: aj @ y - bj, jnp.asarray(y_hat),
                             inequality_fn=lambda y: y[:1] - 10.0, **kw)  # an inactive extra row
    assert i1.converged.all() and i2.converged.all()
    np.testing.assert_allclose(y1, y2, atol=1e-9)


def test_empty_set_with_bounds_is_not_reported_converged():
    fn = lambda y: jnp.sum(y, keepdims=True) - 10.0  # cannot hold with y in [-1, 1]^3
    y, info = project_outputs(fn, jnp.zeros((2, 3)), lower=-1.0, upper=1.0, max_iter=10)
    assert not info.converged.any()
    assert (np.abs(np.asarray(y)) <= 1).all() and np.isfinite(np.asarray(info.violation)).all()


def test_bad_bounds_errors_name_the_fix():
    fn = lambda y: jnp.sum(y, keepdims=True)
    with pytest.raises(ValueError, match="box is empty"):
        project_outputs(fn, jnp.ones((2, 3)), lower=1.0, upper=0.0)
    with pytest.raises(ValueError, match="broadcast"):
        project_outputs(fn, jnp.ones((2, 3)), lower=jnp.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        project_outputs(fn, jnp.ones((2, 3)), upper=jnp.nan)


def test_layer_with_bounds():
    proj = OutputProjection(lambda y: jnp.sum(y, keepdims=True) - 1.0, lower=0.0)  # the simplex
    y = jax.vmap(proj)(jnp.array([[2.0, -1.0, 0.5], [0.2, 0.3, 0.5]]))
    np.testing.assert_allclose(y, [[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], atol=1e-6)


def test_small_cholesky_and_triangular_inverse_match_numpy():
    """The written-out factorisations behind the fast path, against numpy."""
    rng = np.random.default_rng(20)
    a = rng.normal(size=(6, 40))
    g = a @ a.T
    r, ok = outputs._project._chol_upper(jnp.asarray(g), 1e-12)
    assert bool(ok)
    np.testing.assert_allclose(r, np.linalg.cholesky(g).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs._project._inv_upper(r), np.linalg.inv(np.asarray(r)), rtol=1e-4,
                               atol=1e-6)
    g[2] = g[:, 2] = 0.0  # a zero row: a zero pivot is refused, and nothing is NaN
    r, ok = outputs._project._chol_upper(jnp.asarray(g), 1e-6)
    assert not bool(ok) and np.isfinite(np.asarray(r)).all()


@pytest.mark.parametrize("tail", [pytest.param(4, marks=pytest.mark.slow), None], ids=["tail4", "tail16"])
def test_fast_path_tail_and_fallback_agree_with_the_svd_solver(dtype, monkeypatch, tail):
    """Batch-wide CholeskyQR2 iterations, the gathered tail and the SVD fallback give the SVD answer.

    A batch of 40 skeletons with large corrections (iteration counts spread
    from 3 to over 10) and three degenerate ones (zero-length bones: a
    rank-deficient Jacobian that the fast factorisation must decline), solved
    once as shipped (tail 16, or 4 so that the tail loops over several
    chunks) and once with the fast path off (every sample in its own
    vmapped loop with the SVD factorisation).
    """
    rng = np.random.default_rng(21)
    y_hat = random_skeletons(rng, 40, 45.0)
    y_hat[[5, 17, 33]] = 0.0
    y_hat[17, 12] = 50.0  # only the left upper arm and forearm have length
    y_hat[33, :9] = 3.0
    y_hat = jnp.asarray(y_hat, dtype)
    if tail is not None:
        monkeypatch.setattr(outputs._project, "_TAIL", tail)

    def loss(v):  # one compiled program per solver: the outputs, their info and a gradient
        y, info = project_outputs(bone_symmetry, v)
        return jnp.sum(jnp.sin(y)), (y, info)

    (_, (y, info)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(y_hat)
    monkeypatch.setattr(outputs._project, "_FAST_MAX_ROWS", 0)
    (_, (y_ref, info_ref)), grad_ref = jax.jit(jax.value_and_grad(loss, has_aux=True))(y_hat)
    its = np.asarray(info_ref.iterations)
    assert its.max() > 8 and its.min() <= 4  # the batch really spreads
    # the regular samples agree; at the degenerate ones (bones of rounding-level length, whose
    # curvature is 1 / length) the outcome moves with rounding, so they are checked for honesty
    reg = np.ones(40, bool)
    reg[[5, 17, 33]] = False
    assert np.asarray(info_ref.converged)[reg].all() and np.asarray(info.converged)[reg].all()
    assert np.abs(np.asarray(info.iterations) - its)[reg].max() <= 1
    close = dict(rtol=1e-3, atol=1e-2) if dtype == np.float32 else dict(rtol=1e-8, atol=1e-8)
    for got, ref in ((y, y_ref), (info.multipliers, info_ref.multipliers), (grad, grad_ref)):
        np.testing.assert_allclose(np.asarray(got)[reg], np.asarray(ref)[reg], **close)
    for status, out in ((info.status, y), (info_ref.status, y_ref)):
        status = np.asarray(status)[~reg]
        assert np.isin(status, [ProjectionStatus.CONVERGED, ProjectionStatus.STALLED,
                                ProjectionStatus.INFEASIBLE]).all()
        c = np.abs(np.asarray(jax.vmap(bone_symmetry)(out[~reg])))
        assert (c[status == ProjectionStatus.CONVERGED] < 1e-2).all()
    assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(grad)).all()


def test_ill_conditioned_linear_equalities_match_closed_form(dtype):
    """cond(A) = 3e3: past what CholeskyQR2 accepts in float32; the SVD path meets the closed form."""
    rng = np.random.default_rng(22)
    u, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    v, _ = np.linalg.qr(rng.normal(size=(9, 4)))
    a = u @ np.diag([1.0, 0.3, 0.01, 1 / 3e3]) @ v.T
    b = rng.normal(size=4)
    y_hat = rng.normal(size=(6, 9))
    y_ref, _ = affine_projection(a, b, y_hat, np.ones(9))
    aj, bj = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    y, info = project_outputs(lambda y: aj @ y - bj, jnp.asarray(y_hat, dtype))
    assert info.converged.all(), info.describe()
    scale = np.abs(y_ref).max()
    # cond(A) eps: the accuracy of a QR-based solve; plus the stopping rule's own tolerance
    limit = (3e3 * 64 * np.finfo(dtype).eps + 4 * outputs.default_tol(dtype)) * scale
    assert np.abs(np.asarray(y, np.float64) - y_ref).max() <= limit
