"""Deprecated spellings keep working for one release, with a warning naming the new one."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kktopt
from kktopt import KKTSolver


def cfn(w, x):
    return x @ w - 1.0


def test_krylov_kkt_alias():
    with pytest.warns(DeprecationWarning, match=r"kktopt\.KKTSolver\(system='full', method='minres', rtol=0\.001\)"):
        s = kktopt.KrylovKKT(method="minres", rtol=1e-3)
    assert s == KKTSolver(system="full", method="minres", rtol=1e-3)
    assert type(s) is KKTSolver
    assert isinstance(s, kktopt.KrylovKKT) and not isinstance(s, kktopt.SchurKKT)
    with pytest.warns(DeprecationWarning):
        assert kktopt.KrylovKKT() == KKTSolver(system="full", method="minres_qlp")


def test_schur_kkt_alias():
    with pytest.warns(DeprecationWarning, match=r"kktopt\.KKTSolver\(system='schur', method='dense'\)"):
        s = kktopt.SchurKKT()
    assert s == KKTSolver(method="dense")
    with pytest.warns(DeprecationWarning):
        assert kktopt.SchurKKT("cg", rtol=1e-6) == KKTSolver(method="cg", rtol=1e-6)
    assert isinstance(KKTSolver(), kktopt.SchurKKT)


def test_jacobian_keyword_of_the_transforms():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    w, g = jnp.ones(3), jnp.ones(3)
    new = optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn, solver=KKTSolver(method="dense", jacobian="per_sample")))
    with pytest.warns(DeprecationWarning, match=r"KKTSolver\(\.\.\., jacobian='per_sample'\)"):
        old = optax.chain(optax.sgd(0.1), kktopt.project_kkt(cfn, solver=KKTSolver(method="dense"), jacobian="per_sample"))
    for a, b in zip(jax.tree_util.tree_leaves(old.update(g, old.init(w), w, constraint_batch=x)),
                    jax.tree_util.tree_leaves(new.update(g, new.init(w), w, constraint_batch=x))):
        np.testing.assert_array_equal(a, b)
    for make in (
        lambda: kktopt.scale_by_adam_kkt(cfn, 0.1, jacobian="per_sample"),
        lambda: kktopt.hard_adam(0.1, cfn, jacobian="per_sample"),
        lambda: kktopt.gauss_newton_kkt(lambda p, b: p, cfn, damping=1.0, jacobian="per_sample"),
    ):
        with pytest.warns(DeprecationWarning, match="jacobian"):
            make()


def test_new_spellings_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        kktopt.hard_sgd(0.1, cfn, solver=KKTSolver(system="full"))
        kktopt.hard_adam(0.1, cfn)
        kktopt.gauss_newton_kkt(lambda p, b: p, cfn, damping=1.0)
