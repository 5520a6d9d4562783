"""samri.activelearning.sampling: the head mask and the slices scored."""

from __future__ import annotations

import numpy as np

from samri.activelearning.sampling import head_mask, sample_slices
from tests.helpers import synthetic_array


def test_head_mask_ignores_noise_and_sampling_is_even(make_volume) -> None:
    clean = make_volume()
    rng = np.random.default_rng(1)
    noisy = make_volume(synthetic_array() + rng.normal(0, 150, synthetic_array().shape).astype(np.float32))
    head_clean, head_noisy = head_mask(clean.windowed), head_mask(noisy.windowed)
    overlap = (head_clean & head_noisy).sum() / max(head_clean.sum(), 1)
    assert overlap > 0.8 and head_noisy.mean() < 0.5  # the noisy background is not "head"
    indices = sample_slices(head_clean, 2, step=3, max_slices=3, min_foreground=0.05)
    assert len(indices) == 3 and indices == sorted(indices)
    assert all(head_clean[:, :, i].mean() >= 0.05 for i in indices)
    assert sample_slices(np.zeros((5, 5, 9), bool), 2, step=2, max_slices=4, min_foreground=0.1) == [4]
