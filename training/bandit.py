"""Thompson sampling for non-stationary bandits: each arm's reward mean is estimated from its recent rewards only.

OPTIMA (Liang et al., NeurIPS 2023) picks which module to distil next with a modified Thompson sampling that
"leverages the observed contributions in recent history": a module's contribution changes as the student
learns, so old rewards mislead. The paper states the idea, not every constant; ours, each a constructor argument:

- Reward model: an arm's rewards are Gaussian around an unknown mean with standard deviation `noise_std`
  (None: estimated from the rewards in all windows, pooled, floored at `min_noise_std`).
- Prior on each mean: N(`prior_mean`, `prior_std`²); conjugate update with the arm's last `window` rewards only
  (`window=None` keeps every reward: plain, stationary Thompson sampling — the baseline it is compared with).
- Each round draws one mean per arm from its posterior and pulls the argmax.

A per-arm window forgets an arm's history after `window` of its own pulls, so after the best arm changes the
once-best arm's estimate falls within O(window) pulls, where a stationary posterior needs as many bad pulls as
it had good ones (`tests/test_bandit.py` measures both on arms whose means swap).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class SlidingWindowThompson:
    """Gaussian Thompson sampling over `n_arms` arms with a per-arm sliding window of rewards."""

    def __init__(self, n_arms: int, window: int | None = 10, *, prior_mean: float = 0.0, prior_std: float = 1.0,
                 noise_std: float | None = None, min_noise_std: float = 1e-3, seed: int = 0) -> None:
        if n_arms < 1:
            raise ValueError(f"n_arms must be >= 1, got {n_arms}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None (stationary), got {window}")
        if not prior_std > 0 or (noise_std is not None and not noise_std > 0) or not min_noise_std > 0:
            raise ValueError(f"prior_std, noise_std and min_noise_std must be > 0, got {prior_std}, {noise_std}, "
                             f"{min_noise_std}")
        self.window = window
        self.prior_mean, self.prior_std = prior_mean, prior_std
        self.noise_std, self.min_noise_std = noise_std, min_noise_std
        self.rewards: list[deque[float]] = [deque(maxlen=window) for _ in range(n_arms)]
        # Running sums over each window (reward, squared reward), updated as rewards enter and leave it.
        self.sums = np.zeros(n_arms)
        self.squares = np.zeros(n_arms)
        self.pulls = np.zeros(n_arms, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    @property
    def n_arms(self) -> int:
        return len(self.rewards)

    def _noise_std(self) -> float:
        if self.noise_std is not None:
            return self.noise_std
        # Pooled within-arm variance of the windows: the spread of rewards around each arm's own mean.
        counts = self._counts()
        used = counts > 1
        dof = float((counts[used] - 1).sum())
        if not dof:
            return max(self.prior_std, self.min_noise_std)
        within = self.squares[used] - self.sums[used] ** 2 / counts[used]
        return max(math.sqrt(max(float(within.sum()), 0.0) / dof), self.min_noise_std)

    def _counts(self) -> np.ndarray:
        return np.array([len(w) for w in self.rewards], dtype=np.float64)

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [A], std [A]) of each arm's reward mean given the prior and the rewards in its window."""
        noise_var, prior_var = self._noise_std() ** 2, self.prior_std ** 2
        precision = 1 / prior_var + self._counts() / noise_var
        mean = (self.prior_mean / prior_var + self.sums / noise_var) / precision
        return mean, 1 / np.sqrt(precision)

    def select(self) -> int:
        """The arm to pull: argmax of one draw from every arm's posterior."""
        mean, std = self.posterior()
        return int(np.argmax(self.rng.normal(mean, std)))

    def update(self, arm: int, reward: float) -> None:
        if not 0 <= arm < self.n_arms:
            raise ValueError(f"arm must be in [0, {self.n_arms}), got {arm}")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        window = self.rewards[arm]
        if len(window) == window.maxlen:
            self.sums[arm] -= window[0]
            self.squares[arm] -= window[0] ** 2
        window.append(float(reward))
        self.sums[arm] += reward
        self.squares[arm] += reward ** 2
        self.pulls[arm] += 1
