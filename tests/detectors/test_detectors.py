"""The detectors of src/detectors against closed forms: with the exact eps of Gaussian (or
single-point) data every per-image statistic is known, N(0, I) and N(0, 4I) images separate,
N(0, I) and N(0, I) do not; NFE counts; the fits never see test images; the scripts' paths."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import ood_detection
import reconstruct
import train
from conftest import TINY_CONFIG, blob_splits, reseal
from ddpm_ood.detectors import COMBINATIONS, DETECTORS, detector_class, parse_detectors
from ddpm_ood.detectors.base import FeatureDetector, measure_features
from ddpm_ood.detectors.combined import combine
from ddpm_ood.detectors.denoise import DenoiseDetector
from ddpm_ood.detectors.density import fit_gmm, fit_kde, ood_score
from ddpm_ood.detectors.msma import MSMADetector
from ddpm_ood.detectors.path import STATISTICS, PathDetector, ddim_inversion
from ddpm_ood.detectors.recon import ReconDetector
from ddpm_ood.detectors.recon import nfe as recon_nfe
from ddpm_ood.diffusion.ddpm import DDPMSchedule, PLMSSampler
from ddpm_ood.diffusion.reconstruction import measure_split, start_noise
from ddpm_ood.metrics.scoring import auroc
from ddpm_ood.utils.errors import ScoringError
from helpers.oracles import gaussian_oracle, point_mass_oracle

# Every registered detector with one row of features per image: the checks below cover a new one too.
FEATURE_DETECTORS = [name for name in DETECTORS if issubclass(detector_class(name), FeatureDetector)]

SHAPE = (1, 16, 16)  # D = 256 pixels


def counting(model):
    """The model, counting the images it is called on."""
    def call(x, t):
        call.images += x.shape[0]
        return model(x, t)

    call.images = 0
    return call


def gaussian_images(n: int, std: float, seed: int) -> torch.Tensor:
    return std * torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- closed forms -------------------------------------------------------------------------------

def test_ddim_inversion_of_single_point_data_follows_the_formula():
    """Single-point data c: x0_hat = c at every point, so eps stays e0 = (x - sqrt(a_0) c) / sqrt(1 - a_0)
    and x_k = sqrt(a_k) c + sqrt(1 - a_k) e0, ending in e0 itself (a_K = 0)."""
    schedule = DDPMSchedule()
    c = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    x = c + 0.3 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = PathDetector(10).timesteps
    assert ts == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    model = counting(point_mass_oracle(schedule, c))
    eps, points = ddim_inversion(model, schedule.alphas_cumprod, x, ts)
    assert eps.shape == (10, 3, 1, 4, 4) and points.shape == (11, 3, 1, 4, 4) and model.images == 3 * 10
    ab = schedule.alphas_cumprod[ts]
    e0 = (x - np.sqrt(ab[0]) * c) / np.sqrt(1 - ab[0])
    for k in range(10):
        torch.testing.assert_close(eps[k], e0, rtol=0, atol=1e-9)
        torch.testing.assert_close(points[k], x if k == 0 else np.sqrt(ab[k]) * c + np.sqrt(1 - ab[k]) * e0,
                                   rtol=0, atol=1e-9)
    torch.testing.assert_close(points[10], e0, rtol=0, atol=1e-9)


def test_path_statistics_of_gaussian_data_match_their_closed_form():
    """N(0, I) data: eps(x, t) = sqrt(1 - a) x, so each DDIM step scales the point by
    r_k = sqrt(a_k a_{k+1}) + sqrt((1 - a_k)(1 - a_{k+1})) and eps_k = c_k x0 with
    c_k = sqrt(1 - a_k) prod_{j<k} r_j; the six statistics follow."""
    schedule = DDPMSchedule()
    detector = PathDetector(10)
    x0 = gaussian_images(4, 1.0, 1)
    got = detector.features(gaussian_oracle(schedule), schedule, x0, range(4), seed=0)
    ab = schedule.alphas_cumprod[detector.timesteps]
    gain = np.cumprod(np.r_[1.0, np.sqrt(ab[:-1] * ab[1:]) + np.sqrt((1 - ab[:-1]) * (1 - ab[1:]))])
    c = np.sqrt(1 - ab) * gain  # (K,)
    d = 10 * np.diff(c)  # (K-1,)
    flat = x0.flatten(1).numpy()
    s1, s2, s3 = flat.sum(1), (flat ** 2).sum(1), (flat ** 3).sum(1)
    expected = {"eps_sum": c.sum() * s1, "eps_sum_sq": (c ** 2).sum() * s2, "eps_sum_cb": (c ** 3).sum() * s3,
                "deps_dt": d.sum() * s1, "deps_dt_sq": (d ** 2).sum() * s2, "deps_dt_cb": (d ** 3).sum() * s3}
    assert set(got) == set(STATISTICS)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value, rtol=1e-9, err_msg=name)


def test_msma_score_norms_of_gaussian_data_match_their_closed_form():
    """At the noise-free input sqrt(a) x0, the exact score of N(0, v I) data has norm
    sqrt(a) ||x0|| / (a v + 1 - a)."""
    schedule = DDPMSchedule()
    detector = MSMADetector(10)
    x0 = gaussian_images(5, 1.0, 2)
    for variance in (1.0, 4.0):
        model = counting(gaussian_oracle(schedule, variance))
        got = detector.features(model, schedule, x0, range(5), seed=0)
        assert model.images == 5 * detector.nfe() == 50
        ab = schedule.alphas_cumprod[detector.timesteps]
        norms = x0.flatten(1).norm(dim=1).numpy()
        for column, a in zip(detector.columns(), ab):
            np.testing.assert_allclose(got[column].numpy(), np.sqrt(a) * norms / (a * variance + 1 - a), rtol=1e-9)


def test_denoise_errors_of_gaussian_data_match_their_closed_form():
    """N(0, I) data and seeded noise e: eps_theta(x_t) - e = sqrt(a (1 - a)) x0 - a e."""
    schedule = DDPMSchedule()
    detector = DenoiseDetector(10)
    x0 = gaussian_images(3, 1.0, 3)
    ids = [7, 8, 9]
    got = detector.features(gaussian_oracle(schedule), schedule, x0, ids, seed=5)
    noise = start_noise(SHAPE, 5, ids, detector.timesteps).double()  # (B, L, C, H, W)
    for level, (column, t) in enumerate(zip(detector.columns(), detector.timesteps)):
        a = schedule.alphas_cumprod[t]
        expected = ((np.sqrt(a * (1 - a)) * x0 - a * noise[:, level]) ** 2).flatten(1).mean(1)
        np.testing.assert_allclose(got[column].numpy(), expected.numpy(), rtol=1e-7)


def test_nfe_per_image_is_what_the_model_sees():
    schedule = DDPMSchedule()
    x0 = gaussian_images(6, 1.0, 4).float()
    for detector in (PathDetector(10), PathDetector(4), MSMADetector(7), DenoiseDetector(3)):
        model = counting(gaussian_oracle(schedule))
        frame = measure_features(detector, model, schedule, x0, [f"f{i}" for i in range(6)], "in", 4, 0,
                                 torch.device("cpu"), progress=False)
        assert model.images == 6 * detector.nfe() and len(frame) == 6
    assert [PathDetector(10).nfe(), MSMADetector(7).nfe(), DenoiseDetector(3).nfe()] == [10, 7, 3]
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(10)
    starts = sampler.start_indices(3)  # grid indices 0, 3, 6, 9
    model = counting(gaussian_oracle(schedule))
    measure_split(model, schedule, sampler, x0.clamp(0, 1), [f"f{i}" for i in range(6)], "in", starts, 6, 0,
                  torch.device("cpu"), progress=False)
    assert model.images == 6 * recon_nfe(starts) == 6 * (2 + 5 + 8 + 11)


# --- separation ------------------------------------------------------------------------------------

def detector_scores(schedule, fit, sets):
    """Every detector's main scores of ``sets`` (name -> images), fitted on ``fit`` images, with the
    exact eps of N(0, I) data; plus the combination."""
    model = gaussian_oracle(schedule)
    cpu = torch.device("cpu")
    out = {}
    for detector in (detector_class(name)(10) for name in FEATURE_DETECTORS):
        features = {name: measure_features(detector, model, schedule, images.float(), [str(i) for i in range(len(images))],
                                           name, 100, 0, cpu, progress=False)[detector.columns()].to_numpy()
                    for name, images in {"fit": fit, **sets}.items()}
        fitted = detector.fit_features(features["fit"])
        for name, values in features.items():
            for score, array in detector.score_features(fitted, values).items():
                out.setdefault(score, {})[name] = array
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(10)
    starts = sampler.start_indices(3)
    frames = {name: measure_split(model, schedule, sampler, images.float(), [str(i) for i in range(len(images))], name,
                                  starts, 100, 0, cpu, progress=False) for name, images in {"fit": fit, **sets}.items()}
    recon = ReconDetector(10, [int(sampler.grid[j]) for j in starts], ["mse"])
    stats = recon.fit(frames["fit"])
    out["recon:mse"] = {name: recon.score(stats, frame).scores["mse"].to_numpy() for name, frame in frames.items()}
    mains = ["recon:mse", *(detector_class(name).score_names[0] for name in FEATURE_DETECTORS)]
    out["combo"] = {name: combine({m: out[m]["fit"] for m in mains}, {m: out[m][name] for m in mains})
                    for name in out["msma"]}
    return out


@pytest.mark.slow
def test_every_detector_separates_n01_from_n04_and_not_from_n01():
    schedule = DDPMSchedule()
    fit, inside = gaussian_images(200, 1.0, 10), gaussian_images(200, 1.0, 11)
    wide, same = gaussian_images(200, 2.0, 12), gaussian_images(200, 1.0, 13)
    scores = detector_scores(schedule, fit, {"in": inside, "wide": wide, "same": same})
    assert set(scores) == {"recon:mse", "combo", *(s for n in FEATURE_DETECTORS for s in detector_class(n).score_names)}
    for name, by_set in scores.items():
        assert auroc(by_set["in"], by_set["wide"]) > 0.99, name
        assert abs(auroc(by_set["in"], by_set["same"]) - 0.5) < 0.1, name


# --- the density fits ------------------------------------------------------------------------------

def test_density_fits_choose_their_settings_on_the_fit_data_and_score_by_likelihood():
    rng = np.random.default_rng(0)
    two_modes = np.r_[rng.normal(-4, 1, (150, 2)), rng.normal(4, 1, (150, 2))]
    gmm = fit_gmm(two_modes)
    assert gmm.named_steps["density"].n_components >= 2  # one Gaussian fits two modes badly
    centre, mode = ood_score(gmm, np.zeros((1, 2)))[0], ood_score(gmm, np.full((1, 2), 4.0))[0]
    assert centre > mode  # the empty middle is less likely than a mode
    kde = fit_kde(rng.normal(0, 1, 300))
    assert ood_score(kde, np.array([5.0]))[0] > ood_score(kde, np.array([0.0]))[0]
    with pytest.raises(ScoringError, match="at least 10"):
        fit_gmm(two_modes[:5])
    with pytest.raises(ScoringError, match="NaN"):
        fit_kde(np.r_[np.zeros(20), np.nan])


def test_combination_sums_fit_set_z_scores():
    fit = {"a": np.array([0.0, 2.0]), "b": np.array([10.0, 14.0])}  # means 1, 12; std (ddof 1) sqrt 2, sqrt 8
    got = combine(fit, {"a": np.array([1.0, 3.0]), "b": np.array([12.0, 20.0])})
    np.testing.assert_allclose(got, [0.0, 2 / np.sqrt(2) + 8 / np.sqrt(8)])
    with pytest.raises(ScoringError, match="no spread"):
        combine({"a": np.ones(3)}, {"a": np.ones(2)})


def test_detector_names_parse():
    assert parse_detectors("all") == list(DETECTORS)
    assert parse_detectors("recon, path,path") == ["recon", "path"]
    with pytest.raises(ValueError, match="unknown detector"):
        parse_detectors("recon,likelihood")
    with pytest.raises(SystemExit):
        reconstruct.parse_args(["--output_dir=x", "--model_name=m", "--detectors=nope"])
    assert detector_class("msma").from_settings({"msma_t": [0, 500]}).nfe() == 2


# --- through the scripts ---------------------------------------------------------------------------

@pytest.fixture
def detector_run(tmp_path):
    """A tiny trained model and every detector measured on val (12 images), a fit split (12),
    in (6) and one OOD set (6)."""
    paths = blob_splits(tmp_path)
    out = tmp_path / "models"
    train.main(train.parse_args([
        f"--output_dir={out}", "--model_name=blobs", f"--training_ids={paths['train']}",
        f"--validation_ids={paths['val']}", "--is_grayscale=1", f"--config_diffusion_file={TINY_CONFIG}",
        "--n_epochs=1", "--batch_size=8", "--num_sample_images=0", "--num_workers=0"]))

    def run(*extra):
        return reconstruct.main(reconstruct.parse_args([
            f"--output_dir={out}", "--model_name=blobs", f"--validation_ids={paths['val']}",
            f"--in_ids={paths['test']}", f"--out_ids={paths['ood']}", f"--fit_ids={paths['fit']}", "--is_grayscale=1",
            "--num_inference_steps=10", "--inference_skip_factor=3", "--metrics=mse", "--batch_size=4",
            "--chunk_size=5", "--num_workers=0", "--path_steps=4", "--msma_levels=3", "--denoise_levels=2", *extra]))

    return out, run


@pytest.mark.slow
def test_scripts_measure_fit_and_score_every_detector(detector_run, monkeypatch, capsys):
    out, run = detector_run
    written = run("--detectors=all")
    ood = out / "blobs" / "ood"
    assert "fit" not in written and {"path/fit", "msma/val", "denoise/Stripes", "Stripes"} <= set(written)
    path_in = pd.read_csv(ood / "path" / "results_in.csv")
    assert list(path_in.columns) == ["filename", "image_index", "type", *STATISTICS] and len(path_in) == 6
    manifest = json.loads((ood / "msma" / "results_in.settings.json").read_text())
    assert manifest["msma_t"] == [0, 333, 666] and manifest["nfe_per_image"] == 3
    assert json.loads((ood / "results_in.settings.json").read_text())["nfe_per_image"] == 2 + 5 + 8 + 11

    # Record what every fit sees: the fit set's features, never an in or OOD image's.
    seen = {}
    for name in FEATURE_DETECTORS:
        cls = detector_class(name)
        original = cls.fit_features
        monkeypatch.setattr(cls, "fit_features", lambda self, features, seed=0, _o=original, _n=name:
                            (seen.__setitem__(_n, features.copy()), _o(self, features, seed))[1])
    for fit_on in ("val", "fit"):
        seen.clear()
        summary = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs",
                                                               "--bootstrap=0", f"--fit_on={fit_on}"]))
        printed = capsys.readouterr().out
        for name, features in seen.items():
            columns = detector_class(name).from_settings(
                json.loads((ood / name / "results_in.settings.json").read_text())).columns()
            frames = {s: pd.read_csv(ood / name / f"results_{s}.csv")[columns].to_numpy() for s in ("val", "fit", "in", "Stripes")}
            np.testing.assert_array_equal(features, frames[fit_on])
            for test_set in ("in", "Stripes"):
                assert not (features[:, None, :] == frames[test_set][None]).all(2).any(), (name, test_set)
        assert set(seen) == set(FEATURE_DETECTORS)
    assert printed.splitlines()[0].startswith("AUC for blobs vs Stripes: ")  # the seed's line first
    assert "detector  score" in printed and "combo-cheap" in printed
    assert list(summary.columns[:3]) == ["ood_set", "detector", "score"]
    expected_nfe = {("recon", "mse"): 26, ("path", "path-6d"): 4, ("path", "path-1d"): 4, ("msma", "msma"): 3,
                    ("denoise", "denoise"): 2, ("partial", "partial"): 3, ("combo", "combo"): 26 + 4 + 3 + 2 + 3,
                    ("combo", "combo-cheap"): 4 + 3 + 2 + 3}
    nfe = {(r.detector, r.score): r.nfe_per_image for r in summary.itertuples()}
    assert {k: v for k, v in nfe.items() if k in expected_nfe} == expected_nfe  # and every registered detector:
    assert {d for d, _ in nfe} == {*DETECTORS, *COMBINATIONS} and all(v > 0 for v in nfe.values())
    assert summary["auroc"].between(0, 1).all()
    table = pd.read_csv(ood / "scores_in.csv")
    assert {"score", "score_path-6d", "score_path-1d", "score_msma", "score_denoise", "score_partial",
            "score_combo"} <= set(table)
    saved = pd.read_csv(ood / "summary_auroc.csv")
    assert set(saved["detector"]) == {*DETECTORS, *COMBINATIONS}


@pytest.mark.slow
def test_detector_results_resume_and_refuse_other_settings(detector_run):
    out, run = detector_run
    run("--detectors=recon,path")
    results = out / "blobs" / "ood" / "path" / "results_in.csv"
    before = results.read_bytes()
    run("--detectors=recon,path")  # complete: nothing redone
    assert results.read_bytes() == before
    from ddpm_ood.utils.errors import DataError

    with pytest.raises(DataError, match="path_t"):
        run("--detectors=path", "--path_steps=5")
    run("--detectors=path", "--path_steps=5", "--restart")
    assert json.loads(results.with_name("results_in.settings.json").read_text())["path_t"] == [0, 200, 400, 600, 800]


@pytest.mark.slow
def test_scoring_refuses_broken_or_mixed_detector_results(detector_run):
    out, run = detector_run
    run("--detectors=recon,msma")
    ood = out / "blobs" / "ood"
    args = ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs", "--bootstrap=0", "--no-figures"])
    original = (ood / "msma" / "results_in.csv").read_bytes()
    frame = pd.read_csv(ood / "msma" / "results_in.csv")
    frame.loc[3, "score_norm_t0"] = np.nan
    frame.to_csv(ood / "msma" / "results_in.csv", index=False)
    with pytest.raises(ScoringError, match=r"results_in.csv line 5: score_norm_t0 = nan is not a finite number"):
        ood_detection.main(args)
    (ood / "msma" / "results_in.csv").write_bytes(original)
    ood_detection.main(args)
    manifest = ood / "msma" / "results_Stripes.settings.json"
    original_manifest = manifest.read_text()
    reseal(manifest, msma_t=[0, 1, 2])  # as if another run had measured it with other levels
    with pytest.raises(ScoringError, match="msma_t"):
        ood_detection.main(args)
    manifest.write_text(original_manifest.replace('"msma_t": [', '"msma_t": [1, '))  # edited by hand: the seal breaks
    with pytest.raises(ScoringError, match="results_Stripes.settings.json was changed after reconstruct.py wrote it"):
        ood_detection.main(args)
