"""The test sample's own noise in a difference of accuracies: seeds and test examples crossed.

A fixed test set is one sample of the task. Two configurations compared on it differ by
d[s, i] = correct_a[s, i] - correct_b[s, i] on seed s and example i. As a two-way random-effects
model, d = mu + seed_s + example_i + residual_si, and the mean difference's variance is

    sigma_seed^2 / S + sigma_example^2 / N + sigma_residual^2 / (S N).

The seed-only interval estimates the first term (and the last): var_s(mean_i d) / S. The middle
one, the test sample's, never shrinks however many seeds run; it is estimated here from the
per-example means over seeds, var_i(mean_s d) / N, which is MS_example / (S N) in ANOVA terms.
Added to the seeds' part this is the conservative estimate of a crossed design: it counts the
residual twice, where the unbiased (MS_example - MS_residual) / (S N) counts it once. On the real
predictions of ../shared/data/test-predictions.npz the unbiased form came out 26-28% narrower than
a two-way bootstrap over seeds and examples for the mlp pairs, the conservative one 5-13% narrower
(tests/test_two_sources.py); a verdict about the task should not lean on the narrower one.
The same formula holds where seed sets differ (each configuration averaged over its own seeds).
"""

import numpy as np


def test_variance(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float]:
    """The test sample's share of the variance of mean(a) - mean(b), and its degrees of freedom.

    correct_a, correct_b: (seeds, examples) arrays of 0/1 (or per-example scores), one row per seed,
    the examples in the same order in both.
    """
    gap = np.asarray(correct_a, float).mean(axis=0) - np.asarray(correct_b, float).mean(axis=0)
    return float(gap.var(ddof=1) / len(gap)), float(len(gap) - 1)
