"""FID against torch-fidelity itself, across process counts, and the reference-statistics cache."""

import json

import numpy as np
import pytest
import torch
from launch import finished_run, launch_script, module

from lfbm_dist.metrics import fid as fidlib
from lfbm_dist.metrics.inception import TorchScriptInception, load_inception

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("fidrun") / "run", "--config", "configs/test_tiny.yaml")


def _evaluate(launcher, run_dir, cache, *extra):
    args = [
        "--run",
        str(run_dir),
        "--metrics",
        "fid",
        "--out",
        str(cache / "metrics.json"),
        "eval.fid_num_samples=16",  # two batches per rank: the sharding and the gather are what is tested
        "eval.fid_ref_samples=12",
        "eval.fid_batch=4",
        f"eval.cache_dir={cache}",
        *extra,
    ]
    if launcher == "single":
        proc = module("lfbm_dist.evaluate", *args, timeout=900)
    else:  # accelerate launch --multi_gpu --num_processes 2, its ranks warm (tests/launch.py)
        proc = launch_script(launcher, "lfbm_dist/evaluate.py", *args, timeout=900, warm_ranks=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cache / "metrics.json").read_text())


def test_fid_identical_on_one_and_two_processes_and_cache(trained_run, tmp_path):
    one = _evaluate("single", trained_run, tmp_path / "c1")
    two = _evaluate("ddp2", trained_run, tmp_path / "c2")
    assert one["fid_ref_cache"] == two["fid_ref_cache"] == "miss"
    assert abs(one["fid"] - two["fid"]) <= 1e-6 * abs(one["fid"]), (one["fid"], two["fid"])
    assert one["fid_network"] == "fid-inception-v3-torchscript-default_1" and one["fid_num_samples"] == 16
    again = _evaluate("single", trained_run, tmp_path / "c1")
    assert again["fid_ref_cache"] == "hit" and again["fid"] == one["fid"]
    changed = _evaluate("single", trained_run, tmp_path / "c1", "eval.fid_ref_samples=8")
    assert changed["fid_ref_cache"] == "miss" and changed["fid_ref_images"] == 8
    assert len(list((tmp_path / "c1").glob("fid-ref-*.npz"))) == 2


class _UInt8Set(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_our_fid_equals_torch_fidelity_on_the_same_features():
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import register_feature_extractor

    network = load_inception("auto")
    assert isinstance(network, TorchScriptInception)

    class LfbmInception(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        @staticmethod
        def get_provided_features_list():
            return ("2048",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "2048"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

        def forward(self, x):
            # The features our pass computed for these very images (looked up by their bytes): the
            # network runs once per image, and torch-fidelity's statistics and distance see the same
            # features ours did.
            return (torch.stack([features[image.numpy().tobytes()] for image in x.to(torch.uint8)]),)

    try:
        register_feature_extractor("lfbm-test-inception", LfbmInception)
    except Exception:
        pass  # already registered in this process
    from skimage.data import lfw_subset

    faces = torch.from_numpy((lfw_subset() * 255).round().astype(np.uint8))[:, None].expand(-1, 3, -1, -1)
    n = 32  # per set: the covariances are singular (n < 2048), as in every small FID, and still must agree
    set_a = faces[:n].contiguous()
    gen = torch.Generator().manual_seed(0)
    set_b = (faces[100 : 100 + n].float() * 0.7 + 60 * torch.rand(n, 3, 25, 25, generator=gen)).clamp(0, 255)
    set_b = set_b.to(torch.uint8)
    ours_a, ours_b = fidlib.FeatureStats(), fidlib.FeatureStats()
    features = {}
    for images, stats in ((set_a, ours_a), (set_b, ours_b)):
        for batch in images.split(32):
            out = network(batch)
            stats.update(out)
            features.update((image.numpy().tobytes(), f.double()) for image, f in zip(batch, out))
    assert len(features) == len(set_a) + len(set_b)  # every image distinct, so the lookup is one-to-one
    ours = fidlib.frechet_distance(*ours_a.mu_sigma(), *ours_b.mu_sigma())
    theirs = torch_fidelity.calculate_metrics(
        input1=_UInt8Set(set_a),
        input2=_UInt8Set(set_b),
        fid=True,
        feature_extractor="lfbm-test-inception",
        feature_layer_fid="2048",
        cuda=False,
        batch_size=32,
        verbose=False,
        save_cpu_ram=True,
        cache=False,
    )["frechet_inception_distance"]
    assert ours > 1.0  # the sets differ
    assert abs(ours - theirs) <= 1e-3 * abs(theirs), (ours, theirs)


def test_incomparable_fids_are_refused():
    a = {"fid_network": "x", "fid_image_resolution": 64, "fid_num_samples": 50000}
    fidlib.check_comparable(a, dict(a))
    with pytest.raises(ValueError, match="not comparable: fid_network"):
        fidlib.check_comparable(a, {**a, "fid_network": "y"})
    with pytest.raises(ValueError, match="fid_image_resolution"):
        fidlib.check_comparable(a, {**a, "fid_image_resolution": 256})
