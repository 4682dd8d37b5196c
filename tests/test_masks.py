"""Occlusion masks: the paper's sizes, scaled, deterministic per key and seed."""

import pytest
import torch

from lfbm_dist.data.masks import MaskSpecError, make_mask


def test_center_mask_is_40_at_64_and_scales():
    m = make_mask("center", 64)
    assert m.shape == (1, 64, 64) and int((m == 0).sum()) == 40 * 40
    assert (m[0, 12:52, 12:52] == 0).all()
    assert int((make_mask("center", 256) == 0).sum()) == 160 * 160


@pytest.mark.parametrize("size", [20, 30, 40])
def test_single_region_sizes_and_determinism(size):
    a, b = make_mask(f"region:{size}", 64, "key1", 3), make_mask(f"region:{size}", 64, "key1", 3)
    assert torch.equal(a, b) and int((a == 0).sum()) == size * size
    others = {tuple(make_mask(f"region:{size}", 64, f"k{i}", 3).flatten().tolist()) for i in range(20)}
    assert len(others) > 10  # placement varies with the key
    assert not torch.equal(a, make_mask(f"region:{size}", 64, "key1", 4))  # …and with the seed


@pytest.mark.parametrize("pct", [30, 50, 70])
def test_salt_and_pepper_fraction(pct):
    m = make_mask(f"saltpepper:{pct}", 64, "k", 0)
    assert abs(float((m == 0).float().mean()) - pct / 100) < 0.03


def test_bad_spec():
    with pytest.raises(MaskSpecError, match="bad occlusion mask 'region:0'"):
        make_mask("region:0", 64)
