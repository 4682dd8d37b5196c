"""A cheap sample-quality proxy for digit images (the CPU quickstart): FID's recipe with a small digit
classifier instead of Inception, which costs seconds on a CPU instead of minutes.

A one-hidden-layer MLP (scikit-learn) is trained once, with a fixed seed, on the 5,000 packaged
MNIST digits at the run's resolution and cached as plain arrays (no pickle). Reported:

* digit_fd — the Fréchet distance between its hidden-layer features of generated samples and of
  real digits (lower is better; a proxy, NOT comparable with any FID);
* recognisable — the share of samples it classifies with probability ≥ 0.9.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

CACHE_VERSION = 1
CONFIDENT = 0.9


class DigitClassifier:
    def __init__(self, resolution: int, cache_dir: Path = Path(".cache/digits")):
        path = cache_dir / f"mlp-mnist5k-{resolution}-v{CACHE_VERSION}.npz"
        if not path.is_file():
            self._fit(resolution, path)
        with np.load(path, allow_pickle=False) as data:
            self.w1, self.b1, self.w2, self.b2 = (torch.from_numpy(data[k]).float() for k in ("w1", "b1", "w2", "b2"))
            self.accuracy = float(data["accuracy"])

    @staticmethod
    def _fit(resolution: int, path: Path) -> None:
        import logging

        from sklearn.neural_network import MLPClassifier

        logging.getLogger("lfbm_dist").info("fitting the digit classifier once (≈ 15 s; cached in %s)", path.parent)
        from ..data.memory import load_memory_dataset

        images, labels = load_memory_dataset("mnist", resolution, 1)
        x = images.reshape(len(images), -1).float().numpy() / 127.5 - 1.0
        y = labels.numpy()
        order = np.random.default_rng(0).permutation(len(x))
        train, held = order[:4000], order[4000:]
        with warnings.catch_warnings():  # a fixed budget of epochs is the point: no "not converged" notice
            warnings.simplefilter("ignore")
            mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=0).fit(x[train], y[train])
        accuracy = float(mlp.score(x[held], y[held]))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            w1=mlp.coefs_[0],
            b1=mlp.intercepts_[0],
            w2=mlp.coefs_[1],
            b2=mlp.intercepts_[1],
            accuracy=np.array(accuracy),
        )

    def features(self, images_pm1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden features (N, 128), class probabilities (N, 10)) of images in [−1, 1]."""
        x = images_pm1.float().cpu().clamp(-1, 1).reshape(len(images_pm1), -1)
        hidden = torch.relu(x @ self.w1 + self.b1)
        return hidden, torch.softmax(hidden @ self.w2 + self.b2, dim=1)


def digit_quality(classifier: DigitClassifier, samples: torch.Tensor, real: torch.Tensor) -> dict:
    """samples, real: (N, 1, R, R) in [−1, 1]."""
    from .fid import frechet_distance

    fs, probs = classifier.features(samples)
    fr, _ = classifier.features(real)

    def stats(f):
        f = f.double().numpy()
        return f.mean(0), np.cov(f, rowvar=False)

    return {
        "digit_fd": frechet_distance(*stats(fs), *stats(fr)),
        "recognisable": float((probs.max(1).values >= CONFIDENT).float().mean()),
        "digit_classifier_accuracy": classifier.accuracy,
    }
