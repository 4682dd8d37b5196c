"""Unsupervised anomaly detection (§4.4, Table 4).

The decision score is the joint log-density after posterior inference,

    log p(x, z) = log p_α(z) − ‖x − g(z)‖² / (2σ²) − D log(σ √(2π)),

high for normal images; the anomaly score is its negative, split into its two terms
(`recon` = ‖x − g(z)‖²/(2σ²), `prior` = −log p_α(z)) so that each can be inspected alone.

Two named protocols (`eval.anomaly_protocol`):

* `official` — the authors' `train_mnist.py --mode test`: latents inferred by
  `langevin.test_num_steps` (400 = 20 × 20 there) **noise-free** Langevin steps from N(0, I) with the
  training step size; AUPRC = the trapezoidal area under sklearn's precision-recall curve
  (`auc(recall, precision)`), with the held-out digit as the positive class.
* `noisy-ap` — this project's earlier protocol: the same chains *with* the Langevin noise, and
  average precision (sklearn's step-wise AUPRC). Kept only under its own name.

Beside the paper's score, the AUPRC of each term alone and the average precision of the full score
are reported as diagnostics; they never replace `auprc`.
"""

from __future__ import annotations

import torch

from ..inference import EAGER, ChainRunner
from ..inference.likelihood import gaussian_energy, squared_error
from ..progress import NO_PROGRESS, Progress
from ..seeding import Tag
from .sampling import infer


def score_terms(model, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: (‖x − g(z)‖²/(2σ²), −log p_α(z)), both (B,) float64 on the CPU."""
    with torch.no_grad():
        recon = gaussian_energy(squared_error(x, model.generator(z)), model.sigma)
        prior = -model.prior.log_prob(z).float()
    return recon.double().cpu(), prior.double().cpu()


def collect_terms(
    model,
    batches,
    heldout_class: int,
    seed: int,
    num_steps: int,
    step_size: float,
    add_noise: bool,
    progress: Progress = NO_PROGRESS,
    world_size: int = 1,
    chain: ChainRunner = EAGER,
) -> torch.Tensor:
    """(3, N_local) float64: recon term, prior term, is-anomaly flag, for this rank's test images."""
    rows = []
    for x, indices, labels in batches:
        z = infer(model, x, indices, seed, num_steps, step_size, tag=Tag.ANOMALY, add_noise=add_noise, chain=chain)
        recon, prior = score_terms(model, x, z)
        rows.append(torch.stack([recon, prior, (labels == heldout_class).double()]))
        progress.update(len(x) * world_size)
    return torch.cat(rows, dim=1) if rows else torch.zeros(3, 0, dtype=torch.float64)


def auprc_trapezoid(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    """The official code's AUPRC: sklearn `auc(recall, precision)` of `precision_recall_curve`."""
    from sklearn.metrics import auc, precision_recall_curve

    precision, recall, _ = precision_recall_curve(is_anomaly.numpy(), scores.numpy())
    return float(auc(recall, precision))


def average_precision(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(is_anomaly.numpy(), scores.numpy()))


def summarize(terms: torch.Tensor, protocol: str) -> dict:
    """Metrics from gathered (3, N) terms. `auprc` follows the protocol; the rest are diagnostics."""
    recon, prior, flags = terms[0], terms[1], terms[2]
    score = recon + prior  # = −log p(x, z) + const: higher = more anomalous
    primary = auprc_trapezoid if protocol == "official" else average_precision
    normal, anomalous = flags == 0, flags == 1
    return {
        "auprc": primary(score, flags),
        "anomaly_protocol": protocol,
        "anomaly_average_precision": average_precision(score, flags),
        "anomaly_auprc_recon_term_only": primary(recon, flags),
        "anomaly_auprc_prior_term_only": primary(prior, flags),
        "anomaly_chance_auprc": float(flags.mean()),
        "anomaly_recon_term_std": float(recon.std()),
        "anomaly_prior_term_std": float(prior.std()),
        "anomaly_recon_term_gap": float(recon[anomalous].mean() - recon[normal].mean()),
        "anomaly_prior_term_gap": float(prior[anomalous].mean() - prior[normal].mean()),
        "anomaly_test_images": int(flags.numel()),
        "anomaly_positives": int(flags.sum()),
    }
