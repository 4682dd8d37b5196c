"""The aggregated-posterior diagnostic (§3.3 of the paper): learning drives the flow prior p_α(z)
towards the aggregated posterior of the short-run Langevin flow, q(z) = E_x[q_K(z | x)].

On training images, latents are inferred with the *training-time* chain (K noisy steps from
N(0, I)) and scored under the learned prior and under N(0, I). The mean difference (nats per
image) says how much better the learned prior explains where inference puts the latents than
the fixed Gaussian would: 0 for the Gaussian prior by construction, > 0 if the flow has learned
something. For the EBM prior the log-density is unnormalised, so only the N(0, I) term is reported.
"""

from __future__ import annotations

import torch

from ..collectives import SINGLE_PROCESS, Collectives
from ..inference import EAGER, ChainRunner
from ..models import standard_normal_log_prob
from ..progress import NO_PROGRESS, Progress
from ..seeding import Tag
from .sampling import infer


def aggregated_posterior(
    model,
    batches,
    seed: int,
    num_steps: int,
    step_size: float,
    comm: Collectives = SINGLE_PROCESS,
    progress: Progress = NO_PROGRESS,
    chain: ChainRunner = EAGER,
) -> dict:
    sums = torch.zeros(3, dtype=torch.float64)  # Σ log p_α(z), Σ log N(z; 0, I), count
    for x, indices in batches:
        progress.update(len(x) * comm.world_size)
        z = infer(model, x, indices, seed, num_steps, step_size, tag=Tag.AGGPOST, chain=chain)
        with torch.no_grad():
            sums += torch.stack(
                [
                    model.prior.log_prob(z).double().sum().cpu(),
                    standard_normal_log_prob(z).double().sum().cpu(),
                    torch.tensor(float(len(z)), dtype=torch.float64),
                ]
            )
    sums = comm.all_reduce_sum(sums)
    n = max(float(sums[2]), 1.0)
    out = {
        "aggpost_log_p_normal": float(sums[1] / n),
        "aggpost_images": int(sums[2]),
        "aggpost_langevin_steps": num_steps,
    }
    if model.prior.normalized:  # an unnormalised density (EBM) cannot be compared in nats
        out["aggpost_log_p_prior"] = float(sums[0] / n)
        out["aggpost_gap_nats"] = float((sums[0] - sums[1]) / n)
    return out
