"""Sliding-window Thompson sampling (training/bandit.py) on simulated arms whose means swap at a known round."""

import numpy as np
import pytest

from tokencomp.training.bandit import SlidingWindowThompson

SWAP, ROUNDS, WINDOW = 400, 1000, 20
MEANS_BEFORE = np.array([1.0, 0.3, 0.0])  # arm 0 best, then arms 0 and 1 swap: arm 1 best
MEANS_AFTER = np.array([0.3, 1.0, 0.0])


def _run(window: int | None, seed: int) -> np.ndarray:
    """The arm pulled at each round [ROUNDS] on Gaussian arms (std 0.5) whose means swap at round SWAP."""
    bandit = SlidingWindowThompson(3, window, seed=seed)
    rewards = np.random.default_rng(1000 + seed)
    picks = np.zeros(ROUNDS, dtype=np.int64)
    for t in range(ROUNDS):
        arm = bandit.select()
        means = MEANS_BEFORE if t < SWAP else MEANS_AFTER
        bandit.update(arm, float(rewards.normal(means[arm], 0.5)))
        picks[t] = arm
    return picks


def _tracking_delay(picks: np.ndarray, best: int, run: int = 20) -> int:
    """Rounds after the swap until `best` has been pulled in 80 % of a trailing run of `run` rounds."""
    hits = (picks[SWAP:] == best).astype(float)
    trailing = np.convolve(hits, np.ones(run), "valid") / run
    above = np.flatnonzero(trailing >= 0.8)
    return int(above[0]) + run if len(above) else ROUNDS - SWAP


def test_sliding_window_tracks_the_swap_where_stationary_lags():
    seeds = range(8)
    runs = {window: [_run(window, s) for s in seeds] for window in (WINDOW, None)}
    windowed = [_tracking_delay(picks, best=1) for picks in runs[WINDOW]]
    stationary = [_tracking_delay(picks, best=1) for picks in runs[None]]
    # Before the swap both find arm 0 (the window costs little while nothing changes).
    for picks in (*runs[WINDOW], *runs[None]):
        assert (picks[SWAP // 2:SWAP] == 0).mean() > 0.8
    # Within O(window) pulls: the once-best arm's window holds only post-swap rewards after WINDOW of its pulls.
    assert np.median(windowed) <= 4 * WINDOW, windowed
    # Stationary TS must pull the old best arm until its all-time mean falls below 1.0: ~SWAP pulls, not ~WINDOW.
    assert np.median(stationary) >= 3 * np.median(windowed), (windowed, stationary)
    after = slice(SWAP, SWAP + 200)
    share_windowed = np.mean([(picks[after] == 1).mean() for picks in runs[WINDOW]])
    share_stationary = np.mean([(picks[after] == 1).mean() for picks in runs[None]])
    assert share_windowed > share_stationary + 0.3, (share_windowed, share_stationary)


def test_posterior_is_the_conjugate_normal_update_on_the_window():
    bandit = SlidingWindowThompson(2, window=3, prior_mean=0.5, prior_std=2.0, noise_std=1.0)
    for r in (10.0, 1.0, 2.0, 3.0):  # the 10 falls out of the 3-reward window
        bandit.update(0, r)
    mean, std = bandit.posterior()
    precision = 1 / 4 + 3 / 1
    assert mean[0] == pytest.approx((0.5 / 4 + 6.0) / precision)
    assert std[0] == pytest.approx(precision ** -0.5)
    assert mean[1] == pytest.approx(0.5) and std[1] == pytest.approx(2.0)  # unpulled: the prior
    assert bandit.pulls.tolist() == [4, 0]


def test_estimated_noise_is_the_pooled_within_arm_spread():
    bandit = SlidingWindowThompson(2, window=None, prior_std=1.0)
    for r in (1.0, 3.0):
        bandit.update(0, r)
    for r in (10.0, 12.0, 14.0):
        bandit.update(1, r)
    # Within-arm squares: 2 + 8 = 10 over 1 + 2 degrees of freedom.
    assert bandit._noise_std() == pytest.approx((10 / 3) ** 0.5)


@pytest.mark.parametrize("kwargs", [{"n_arms": 0}, {"n_arms": 2, "window": 0}, {"n_arms": 2, "prior_std": 0.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SlidingWindowThompson(**kwargs)


def test_bad_updates_are_refused():
    bandit = SlidingWindowThompson(2)
    with pytest.raises(ValueError, match="arm"):
        bandit.update(2, 1.0)
    with pytest.raises(ValueError, match="finite"):
        bandit.update(0, float("nan"))
