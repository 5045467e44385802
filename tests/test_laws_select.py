"""Choosing a law by held-out scales, the compute frontier and its law, and the power-law regime, each
checked against data generated from a known law."""

from __future__ import annotations

import numpy as np
import pytest

from scalescope.errors import FitError
from scalescope.laws import chinchilla_loss, compute_optimal_allocation
from scalescope.laws.frontier import ComputeFrontierLaw, frontier_mask
from scalescope.laws.select import candidate_laws, compare_laws, tokens_per_param_mask

H = 2.0  # the source's entropy rate: the generating law's E
REDUCED = {"E": H, "A": 40.0, "B": 60.0, "alpha": 0.32, "beta": 0.32}  # E = H and alpha = beta
FAST = {"bootstrap": 20, "grid": "coarse", "n_starts": 8}


def grid(n_N: int, n_D: int) -> np.ndarray:
    Ng, Dg = np.meshgrid(np.geomspace(1e4, 2e5, n_N), np.geomspace(1e5, 3e6, n_D))
    return np.column_stack([Ng.ravel(), Dg.ravel()])


def test_frontier_mask_exact_small_case() -> None:
    # Budgets 1 (two runs within 5%), 2, 4 (two runs), 8; losses chosen so that budget 4's best (2.6) does
    # not beat budget 2's best (2.5): more compute that bought nothing is not on the frontier.
    C = np.array([1.0, 1.03, 2.0, 4.0, 4.1, 8.0])
    L = np.array([3.0, 2.9, 2.5, 2.7, 2.6, 2.0])
    assert frontier_mask(C, L).tolist() == [False, True, True, False, False, True]
    # With rtol 0 every run is its own budget: 1.03 (2.9) beats 1.0 (3.0) and is kept too.
    assert frontier_mask(C, L, rtol=0.0).tolist() == [True, True, True, False, False, True]
    with pytest.raises(FitError, match="C has 2 values but loss has 1"):
        frontier_mask([1.0, 2.0], [1.0])


def test_frontier_law_recovers_the_compute_optimal_law() -> None:
    # IsoFLOP profiles of a known Chinchilla law, each holding the exact compute-optimal N (Hoffmann et al.
    # appendix D.2) among 5 sizes: the frontier is the optimum, on which L(C) = E + A C^-gamma exactly, with
    # gamma = alpha beta/(alpha+beta) and A = (A_N G^-alpha + B G^beta) 6^gamma.
    T = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    C, L = [], []
    for c in np.logspace(18, 22, 9):
        n0, _ = compute_optimal_allocation(c, A=T["A"], B=T["B"], alpha=T["alpha"], beta=T["beta"])
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            C.append(c)
            L.append(chinchilla_loss(n0 * f, c / (6 * n0 * f), **T))
    law = ComputeFrontierLaw(bootstrap=20, random_state=0).fit(np.array(C), np.array(L))
    gamma = T["alpha"] * T["beta"] / (T["alpha"] + T["beta"])
    G = (T["alpha"] * T["A"] / (T["beta"] * T["B"])) ** (1 / (T["alpha"] + T["beta"]))
    A = (T["A"] * G ** -T["alpha"] + T["B"] * G ** T["beta"]) * 6**gamma
    assert int(law.frontier_mask_.sum()) == 9  # one run per budget: the optimum
    # Noiseless and exactly of the fitted form: recovered to optimizer precision.
    assert law.params_["E"] == pytest.approx(T["E"], rel=1e-6)
    assert law.params_["gamma"] == pytest.approx(gamma, rel=1e-6)
    assert law.params_["A"] == pytest.approx(A, rel=1e-5)
    assert law.summary()["frontier"]["points"] == 9


def test_frontier_law_needs_enough_budgets() -> None:
    with pytest.raises(FitError, match="compute frontier of these 3 runs has 3 points"):
        ComputeFrontierLaw(bootstrap=0).fit([1e10, 1e11, 1e12], [3.0, 2.5, 2.2])


def test_tokens_per_param_mask() -> None:
    N, D = np.array([1e4, 1e4, 1e5]), np.array([1e5, 2e5, 1e6])
    assert tokens_per_param_mask(N, D, 15).tolist() == [False, True, False]
    assert tokens_per_param_mask(N, D, None).all()
    with pytest.raises(FitError, match="min_tokens_per_param"):
        tokens_per_param_mask(N, D, -1.0)


def test_auto_picks_the_generating_reduced_form_when_the_full_fit_is_not_identifiable() -> None:
    # 3 sizes x 3 budgets, 0.5% noise, generated with E = H and alpha = beta. Holding out one of 3 sizes
    # leaves 2, which cannot pin E, A and alpha: the free law (and the floor) cannot be checked; of the
    # checkable reduced forms the generating one (3 free parameters) must win. Over seeds 0-5 it did every
    # time (its mean held-out error 0.8-1.3%, the others' 0.8-2.3%).
    X = grid(3, 3)
    y = chinchilla_loss(X[:, 0], X[:, 1], **REDUCED) * np.exp(np.random.default_rng(0).normal(0, 0.005, len(X)))
    sel = compare_laws(X, y, entropy_rate=H, random_state=0, **FAST)
    assert sel.chosen == "chinchilla_fixed_E_shared"
    assert sel.scale_name == "N" and len(sel.scales) == 3
    full = sel.result("chinchilla")
    assert not full.eligible and full.folds == [] and "needs 3" in full.note
    chosen = sel.result(sel.chosen)
    assert len(chosen.folds) == 3 and chosen.largest is not None and chosen.largest.scale == X[:, 0].max()
    # Every fold predicts the held-out size's 3 runs; the errors are at the noise level (< 3%).
    assert all(f.n_test == 3 and f.error is None for f in chosen.folds)
    assert chosen.largest_error < 0.03 and chosen.cv_error < 0.03
    p = chosen.summary
    assert p["E"] == H and p["alpha"] == p["beta"] == pytest.approx(REDUCED["alpha"], rel=0.15)
    assert sel.reason.startswith("Chinchilla (E fixed to the entropy rate 2, shared exponent) extrapolates")
    assert "held-out largest N" in sel.reason and "not eligible" in sel.reason
    d = sel.as_dict()
    assert d["chosen"] == sel.chosen and {c["name"] for c in d["candidates"]} >= {"chinchilla", "frontier"}


def test_auto_without_entropy_rate_and_with_one_budget() -> None:
    X = grid(3, 3)
    y = chinchilla_loss(X[:, 0], X[:, 1], **REDUCED)
    cands, skipped = candidate_laws(X, y, entropy_rate=None, **FAST)
    assert [c.name for c in cands] == ["chinchilla", "chinchilla_shared", "frontier"]
    assert "no known entropy rate" in skipped["chinchilla_fixed_E"]
    # An entropy rate above the smallest loss cannot be a floor: the fixed-E forms are skipped, said why.
    _, skipped = candidate_laws(X, y, entropy_rate=10.0, **FAST)
    assert "not below the smallest loss" in skipped["chinchilla_fixed_E"]
    # One budget D: Chinchilla's D term is a constant; the power laws in N are the candidates and the
    # saturating one (the generating form at fixed D: E' = E + B D^-beta) is recovered and chosen.
    N = np.geomspace(1e4, 1e6, 6)
    X1 = np.column_stack([N, np.full(6, 1e6)])
    y1 = chinchilla_loss(X1[:, 0], X1[:, 1], **REDUCED)
    sel = compare_laws(X1, y1, **FAST)
    assert "chinchilla" in sel.skipped and sel.chosen == "power_N"
    e_fixed_d = REDUCED["E"] + REDUCED["B"] * 1e6 ** -REDUCED["beta"]
    assert sel.result("power_N").summary["E"] == pytest.approx(e_fixed_d, rel=1e-5)  # noiseless: exact
    assert sel.result("power_N").largest_error < 1e-6
