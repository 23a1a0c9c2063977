"""Density models for detectors whose per-image features are not a score by themselves.

The fit sees only in-distribution images that are not test images (the validation split by
default) and chooses its own settings on them alone, by cross-validated log-likelihood:

- :func:`fit_gmm`: features standardised, then scikit-learn's GaussianMixture; the number of
  components and the covariance type are chosen by 5-fold cross-validation on the fit data (as
  DiffPath's ``eval_6d.py`` does with a larger grid, sized here for a few hundred images).
- :func:`fit_kde`: one feature standardised, then a Gaussian KernelDensity whose bandwidth is
  chosen the same way (DiffPath's ``eval_1d.py`` fixed it at 5 on the raw statistic).

Both return a fitted scikit-learn pipeline; :func:`ood_score` turns it into the OOD score of
new features: the negative log-likelihood (higher = more OOD).
"""
from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ddpm_ood.utils.errors import ScoringError

MIN_FIT_IMAGES = 10  # fewer cannot be cross-validated in 5 folds of two or more
GMM_COMPONENTS = (1, 2, 4, 8, 16)
GMM_COVARIANCES = ("full", "diag")
KDE_BANDWIDTHS = tuple(np.logspace(-1.5, 0.5, 9).round(4))  # on standardised values


def _check(features: np.ndarray, what: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    if len(features) < MIN_FIT_IMAGES:
        raise ScoringError(f"{what}: {len(features)} fit images; a density fit needs at least {MIN_FIT_IMAGES}. Measure "
                           "more of the fit set (reconstruct.py --first_n_val sets how many of the --validation_ids "
                           "or --fit_ids images; ood_detection.py --fit_on chooses which).")
    if not np.isfinite(features).all():
        raise ScoringError(f"{what}: the fit features hold NaN or inf values.")
    constant = np.flatnonzero(features.std(0) == 0)
    if len(constant):
        raise ScoringError(f"{what}: feature {int(constant[0])} has the same value for all {len(features)} fit images "
                           "(identical images?), so a density fitted to it would be a point mass. Fit on images that "
                           "differ (the validation split, or --fit_ids).")
    return features


def _folds(n: int, seed: int) -> KFold:
    return KFold(n_splits=min(5, n // 2), shuffle=True, random_state=seed)


def fit_gmm(features: np.ndarray, seed: int = 0, what: str = "GMM") -> Pipeline:
    """StandardScaler + GaussianMixture, its size and covariance type chosen by cross-validated
    log-likelihood on ``features`` (N, D) alone. At most one component per 20 images."""
    features = _check(features, what)
    components = [k for k in GMM_COMPONENTS if k == 1 or 20 * k <= len(features)]
    pipeline = Pipeline([("scale", StandardScaler()),
                         ("density", GaussianMixture(random_state=seed, reg_covar=1e-4, max_iter=300))])
    grid = GridSearchCV(pipeline, {"density__n_components": components, "density__covariance_type": GMM_COVARIANCES},
                        cv=_folds(len(features), seed))
    return grid.fit(features).best_estimator_


def fit_kde(values: np.ndarray, seed: int = 0, what: str = "KDE") -> Pipeline:
    """StandardScaler + Gaussian KernelDensity, its bandwidth chosen by cross-validated
    log-likelihood on ``values`` alone."""
    values = _check(values, what)
    pipeline = Pipeline([("scale", StandardScaler()), ("density", KernelDensity(kernel="gaussian"))])
    grid = GridSearchCV(pipeline, {"density__bandwidth": list(KDE_BANDWIDTHS)}, cv=_folds(len(values), seed))
    return grid.fit(values).best_estimator_


def ood_score(fitted: Pipeline, features: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each row under the fitted density (higher = more OOD)."""
    features = np.asarray(features, dtype=np.float64)
    return -fitted.score_samples(features[:, None] if features.ndim == 1 else features)


def density_state(fitted: Pipeline) -> dict:
    """A fitted density as plain JSON (no pickle): the standardisation and the mixture's weights,
    means, covariances and precision factors, or the KDE's points and bandwidth. JSON keeps every
    digit, so :func:`density_from_state` scores exactly as the fit it was made from."""
    scaler, density = fitted.named_steps["scale"], fitted.named_steps["density"]
    state = {"scale": {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()}}
    if isinstance(density, GaussianMixture):
        state["gmm"] = {"covariance_type": density.covariance_type, "weights": density.weights_.tolist(),
                        "means": density.means_.tolist(), "covariances": density.covariances_.tolist(),
                        "precisions_cholesky": density.precisions_cholesky_.tolist()}
    else:
        state["kde"] = {"kernel": density.kernel, "bandwidth": float(density.bandwidth_),
                        "points": np.asarray(density.tree_.data).tolist()}
    return state


def density_from_state(state: dict) -> Pipeline:
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_ = (np.asarray(state["scale"][k], dtype=np.float64) for k in ("mean", "scale"))
    scaler.var_, scaler.n_features_in_ = scaler.scale_ ** 2, len(scaler.mean_)
    if "gmm" in state:
        gmm = state["gmm"]
        density = GaussianMixture(n_components=len(gmm["weights"]), covariance_type=gmm["covariance_type"])
        for name in ("weights", "means", "covariances", "precisions_cholesky"):
            setattr(density, f"{name}_", np.asarray(gmm[name], dtype=np.float64))
        density.n_features_in_, density.converged_ = len(scaler.mean_), True
    else:
        kde = state["kde"]
        density = KernelDensity(kernel=kde["kernel"], bandwidth=kde["bandwidth"]).fit(
            np.asarray(kde["points"], dtype=np.float64))
    return Pipeline([("scale", scaler), ("density", density)])
