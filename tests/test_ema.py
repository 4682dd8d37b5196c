"""Weight averaging (training/ema.py): the EMA and the power-function EMAs never feed training, live in
the one checkpoint format, are what samples, evaluations and exports use, and post-hoc EMA rebuilds an
EMA length from the saved snapshots as an EMA tracked directly would have it."""

import json

import pytest
import torch
from launch import finished_run, module, run
from safetensors.torch import load_file

from lfbm_dist import state_schema as schema
from lfbm_dist.config import EmaConfig
from lfbm_dist.training.checkpoint import latest, read_state
from lfbm_dist.training.ema import WeightAverages, posthoc_weights, std_to_gamma

TINY = ["--config", "configs/test_tiny.yaml", "train.total_kimg=0.064", "train.snapshot_every_kimg=0.032"]
OFF = ["ema.halflife_kimg=0", "ema.posthoc_std=[]"]


def test_std_to_gamma_inverts_the_profiles_relative_standard_deviation():
    for std in (0.01, 0.05, 0.1, 0.2, 0.28):
        g = std_to_gamma(std)
        assert ((g + 1) / ((g + 2) ** 2 * (g + 3))) ** 0.5 == pytest.approx(std, rel=1e-9)
    assert std_to_gamma(0.05) == pytest.approx(16.97, abs=0.01) and std_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)


def test_post_hoc_ema_rebuilds_an_ema_tracked_directly(tmp_path):
    """Parameters moving as a random walk for 300 steps; the two default profiles (σ_rel 0.05, 0.10) saved
    every 10 steps in float32; lengths inside and outside them rebuilt at step 300 and compared with a
    power-function EMA of that length tracked step by step. Tolerance, relative to how far the direct EMA
    is from the raw weights (what averaging changed): 1e-3 (measured ≤ 1.5e-4 for 0.07, 0.10, 0.15), and
    1e-2 for 0.03, shorter than the shortest profile saved (measured 3.2e-3: an extrapolation)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    saved = WeightAverages(model, EmaConfig(halflife_kimg=0, posthoc_std=[0.05, 0.10], posthoc_dtype="float32"), 1)
    targets = (0.03, 0.07, 0.10, 0.15)
    direct = WeightAverages(model, EmaConfig(halflife_kimg=0, posthoc_std=list(targets)), 1)
    for step in range(1, 301):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        saved.update(model, step, step)
        direct.update(model, step, step)
        if step % 10 == 0:
            saved.write_posthoc(tmp_path, step, step)
    for std in targets:
        rebuilt = posthoc_weights(tmp_path, std)
        for name, p in model.named_parameters():
            want = direct.kinds[schema.power_ema(std)][name]
            error = (rebuilt[name] - want).norm() / (want - p.detach()).norm()
            assert error < (1e-3 if std >= 0.05 else 1e-2), (std, name, float(error))


def _raw(state: dict) -> dict:
    return {k: v for k, v in state.items() if not schema.is_ema(schema.kind_of(k))}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["single", "ddp2"])
def test_training_with_ema_is_bitwise_training_without(tmp_path, kind):
    """The averages only read the weights: raw weights, Adam state and buffers bitwise equal with EMA on
    and off, on one rank and two. A run without EMA resumed with it: one line, the averages start from
    its raw weights."""
    batch = "train.batch_per_gpu=4" if kind == "ddp2" else "train.batch_per_gpu=8"
    on, off = tmp_path / "on", tmp_path / "off"
    for run_dir, extra in ((on, []), (off, OFF)):
        proc = run(kind, *TINY, batch, f"train.run_dir={run_dir}", *extra, warm_ranks=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = read_state(latest(on)), read_state(latest(off))
    assert {schema.EMA, "ema_std0.05", "ema_std0.1"} <= {schema.kind_of(k) for k in a}
    assert not any(schema.is_ema(schema.kind_of(k)) for k in b)
    assert _raw(a).keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    assert any(
        not torch.equal(a[f"ema/{n}"], a[f"param/{n}"])
        for n in (k.split("/", 1)[1] for k in a if k.startswith("param/"))
    )
    if kind == "single":
        more = run(kind, *TINY, batch, f"train.run_dir={off}", "train.total_kimg=0.096", "train.resume=auto")
        assert more.returncode == 0, more.stderr[-2000:]
        assert "holds no ema, ema_std0.05, ema_std0.1: they start from its raw weights" in more.stdout, more.stdout


@pytest.mark.slow
def test_samples_evaluations_and_exports_use_the_ema_and_post_hoc_lengths_are_scored(tmp_path):
    run_dir = finished_run(tmp_path / "r", *TINY, "train.total_kimg=0.096", "train.snapshot_every_kimg=0.016")
    state = read_state(latest(run_dir))
    # lfbm-export: the EMA's weights by default, the raw ones on request; the model card says which
    for weights, kind in (("ema", schema.EMA), ("raw", schema.PARAM)):
        out = tmp_path / f"export_{weights}"
        args = ["--run", str(run_dir), "--out", str(out)] + (["--weights", "raw"] if weights == "raw" else [])
        done = module("lfbm_dist.export", *args)
        assert done.returncode == 0, done.stderr[-2000:]
        exported = load_file(str(out / "model.safetensors"))
        for key, value in state.items():
            if schema.kind_of(key) == kind:
                assert torch.equal(exported[schema.name_of(key)], value), key
        card = (out / "README.md").read_text()
        assert ("exponential moving average" in card) == (weights == "ema")
        assert json.loads((out / "config.json").read_text())["weights"] == weights
    # lfbm-evaluate --ema-length: FID of the raw weights, the half-life EMA and each post-hoc length, on the
    # same reference and samples; a table in metrics.json, a figure, the trackers' scalars
    fid = ["eval.fid_num_samples=16", "eval.fid_ref_samples=16", "eval.fid_batch=16"]
    done = module("lfbm_dist.evaluate", "--run", str(run_dir), "--metrics", "fid", "--ema-length", "0.05,0.1", *fid,
                  timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["weights"] == "ema" and set(metrics["fid_posthoc"]) == {"0.05", "0.1"}
    assert {"fid_raw", "fid_ema", "fid_posthoc_best"} <= set(metrics) and metrics["fid"] == metrics["fid_ema"]
    assert (run_dir / "fid_vs_ema_length.png").stat().st_size > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()
    assert any(t.endswith("/fid_posthoc_std0.05") for t in tags["scalars"]), tags["scalars"]
    assert any(t.endswith("/fid_vs_ema_length") for t in tags["images"]), tags["images"]
