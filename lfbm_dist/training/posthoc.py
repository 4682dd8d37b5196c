"""FID against EMA length, chosen after training (`lfbm-evaluate --ema-length 0.03,0.05,0.1,0.15`).

For each requested relative standard deviation σ_rel the EMA is rebuilt from the run's power-function
snapshots (training/ema.py: EDM2's post-hoc EMA) at the evaluated checkpoint, loaded into the model and
scored with the run's FID — the same reference statistics and the same index-seeded samples for every
length — beside the raw weights and the EMA with a half-life kept during training. The results go to
metrics.json (`fid_posthoc`), a table in the log, RUN_DIR/fid_vs_ema_length.png and the trackers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .checkpoint import model_state_dict, read_state
from .ema import posthoc_weights, weights_loaded
from .evaluation import run_metrics

log = logging.getLogger("lfbm_dist")
FIGURE = "fid_vs_ema_length.png"


def fid_count(lengths: list[float]) -> int:
    """How many FIDs fid_by_ema_length computes: the raw weights', the half-life EMA's and one per length."""
    return len(lengths) + 2 if lengths else 0


def fid_by_ema_length(model, cfg, run_dir: Path, ckpt: Path, lengths: list[float], comm, chain, **kw) -> dict:
    """Collective: FID of the raw weights, the half-life EMA and each post-hoc EMA length."""
    images_seen = int(ckpt.name.split("-")[1]) if ckpt.name.startswith("ckpt-") else None
    state = read_state(ckpt)
    names = {n for n, _ in model.named_parameters()}

    def candidates():  # one set of weights at a time (a 256² model's seven would be 1.4 GB at once)
        yield "raw", model_state_dict(state, "raw")
        yield "ema", model_state_dict(state, "ema")
        for length in lengths:
            yield f"{length:g}", posthoc_weights(run_dir, length, images_seen)

    fids = {}
    for name, weights in candidates():
        with weights_loaded(model, {k: v for k, v in weights.items() if k in names}):
            fids[name] = run_metrics(model, cfg, ["fid"], kw["device"], comm, chain=chain)["fid"]
        log.info("FID %.3f with %s", fids[name], name if name in ("raw", "ema") else f"post-hoc EMA σ_rel {name}")
    return {
        "fid_raw": fids.pop("raw"),
        "fid_ema": fids.pop("ema"),
        "fid_posthoc": fids,
        "fid_posthoc_best": min(fids, key=fids.get) if fids else None,  # the length (σ_rel) …
        "fid_posthoc_min": min(fids.values()) if fids else None,  # … and its FID
    }


def draw(results: dict, out: Path, title: str) -> Path:
    """FID against EMA length (σ_rel), the raw weights' and the half-life EMA's FID as lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    lengths = sorted(results["fid_posthoc"], key=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot([float(x) for x in lengths], [results["fid_posthoc"][x] for x in lengths], "o-", label="post-hoc EMA")
    ax.axhline(results["fid_raw"], color="grey", linestyle="--", label=f"raw weights ({results['fid_raw']:.1f})")
    ax.axhline(
        results["fid_ema"], color="tab:orange", linestyle=":", label=f"EMA, half-life ({results['fid_ema']:.1f})"
    )
    ax.set_xlabel("EMA length σ_rel (relative standard deviation of the averaging profile)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title, fontsize=9, wrap=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
