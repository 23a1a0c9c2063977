"""One contract, tested over the registry (as diffusers' scheduler tests run over every scheduler):
a new detector is one module, one registry entry and its own test, and these checks cover it
without a line here changing."""
from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import reconstruct
from ddpm_ood.detectors import COMBINATIONS, DETECTORS, detector_class, measure_knobs
from ddpm_ood.detectors.base import CombinationRule, Detector, FeatureDetector
from ddpm_ood.diffusion.ddpm import DDPMSchedule
from ddpm_ood.models.loading import IMAGE_RANGE
from ddpm_ood.utils.errors import DataError, UserError
from helpers.oracles import gaussian_oracle

SCHEDULE = DDPMSchedule()


def fake_model():
    """The exact eps of N(0.5, 0.01 I) images, as a loaded model: what every detector measures with."""
    oracle = gaussian_oracle(SCHEDULE, variance=0.01)
    return SimpleNamespace(model_fn=lambda x, t: oracle(x - 0.5, t), schedule=SCHEDULE, device=torch.device("cpu"),
                           space=IMAGE_RANGE, data_range=IMAGE_RANGE)


def args_for(name):
    """reconstruct.py's defaults, made cheap: few timesteps, MSE only."""
    knobs = {k.dest: k.default for k in measure_knobs()}
    cheap = {"num_inference_steps": 10, "inference_skip_factor": 3, "metrics": "mse", "path_steps": 4,
             "msma_levels": 3, "denoise_levels": 3}
    return SimpleNamespace(**{**knobs, **{k: v for k, v in cheap.items() if k in knobs}})


def images(n, seed, spread=0.1):
    generator = torch.Generator().manual_seed(seed)
    return (0.5 + spread * torch.randn(n, 1, 8, 8, generator=generator)).clamp(0, 1)


@pytest.fixture(params=list(DETECTORS))
def detector(request):
    return detector_class(request.param).from_args(args_for(request.param), fake_model())


def test_every_registered_detector_is_a_complete_detector(detector):
    cls = type(detector)
    assert issubclass(cls, Detector) and not inspect.isabstract(cls)
    assert cls.name in DETECTORS and detector.score_names and len(set(detector.score_names)) == len(detector.score_names)
    assert isinstance(detector.nfe(), int) and detector.nfe() > 0


def test_results_folders_and_score_names_never_clash():
    classes = [detector_class(name) for name in DETECTORS]
    assert len({cls.folder() for cls in classes}) == len(classes)
    names = [score for cls in classes for score in cls.score_names] + \
            [score for name in COMBINATIONS for score in detector_class(name).score_names]
    assert len(set(names)) == len(names)


def test_settings_round_trip_through_json_and_the_constructor(detector):
    settings = json.loads(json.dumps(detector.settings()))
    again = type(detector).from_settings(settings)
    assert again.settings() == detector.settings()


def test_from_settings_runs_the_constructors_checks(detector):
    """Main before this: FeatureDetector.from_settings skipped __init__, so a damaged manifest's
    settings were taken as they were."""
    broken = {key: ([-5, 3, 3] if isinstance(value, list) else value) for key, value in detector.settings().items()}
    with pytest.raises(UserError):
        type(detector).from_settings(broken)


def test_measure_fit_and_score_as_the_contract_says(detector, tmp_path):
    model = fake_model()
    fit, inside, outside = images(24, 0), images(8, 1), images(8, 2, spread=0.4)
    frames = {name: detector.measure(model, batch, [f"{name}_{i}" for i in range(len(batch))], name, 5, 0,
                                     progress=False) for name, batch in (("val", fit), ("in", inside), ("ood", outside))}
    paths = {name: tmp_path / f"results_{name}.csv" for name in frames}
    for name, frame in frames.items():  # results files read back as written; they are what is scored
        frame.to_csv(paths[name], index=False)
        frames[name] = detector.read(paths[name])
        assert len(frames[name]) == len(frame)
    detector, frames = detector.for_scoring(frames, paths, SimpleNamespace(max_start_t=None, min_start_t=None, t_skip=1))
    fitted = detector.fit(frames["val"], seed=0, source="val")
    state = json.loads(json.dumps(detector.fit_state(fitted)))  # the fit file is plain JSON
    for name, frame in frames.items():
        scored = detector.score(fitted, frame).scores
        again = detector.score(detector.load_fit(state), frame).scores
        assert set(scored) == set(detector.score_names)
        for score in detector.score_names:
            assert len(scored[score]) == len(frame["filename"].unique()) and np.isfinite(scored[score]).all()
            np.testing.assert_allclose(again[score], scored[score], rtol=1e-12)
    main = detector.primary
    assert detector.score(fitted, frames["ood"]).scores[main].mean() > detector.score(fitted, frames["in"]).scores[main].mean()


def test_a_detector_missing_part_of_the_contract_cannot_be_made():
    class Incomplete(FeatureDetector):
        name = "incomplete"

        def features(self, model, schedule, x0, image_keys, seed):
            return {}

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(2)


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_every_combination_follows_the_combination_protocol(name):
    combination = detector_class(name)
    import inspect

    # Its declared attributes, of the declared types: a registry key that is its name, and score names.
    assert combination.name == name
    assert isinstance(combination.score_names, tuple) and combination.score_names
    assert all(isinstance(score, str) for score in combination.score_names)
    # Its functions take what the protocol's take, so evaluation can call any entry alike.
    for function in ("members", "fit", "score"):
        expected = list(inspect.signature(getattr(CombinationRule, function)).parameters)[1:]
        given = list(inspect.signature(getattr(combination, function)).parameters)
        assert given[-len(expected):] == expected, (function, given, expected)
    three = [detector_class(d).from_args(args_for(d), fake_model()) for d in DETECTORS]
    members = combination.members(three)
    assert members and all(len(m) >= 2 and set(m) <= set(DETECTORS) for m in members.values())


@pytest.mark.parametrize("flag,value", [("--path_steps", "1"), ("--msma_levels", "0"), ("--denoise_levels", "0")])
def test_detector_levels_are_range_checked_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as err:
        reconstruct.parse_args(["--output_dir=o", "--model_name=m", f"{flag}={value}"])
    assert err.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("name", ["path", "msma", "denoise"])
def test_detector_levels_above_the_models_timesteps_are_refused(name):
    """The most levels is the model's own T (1,000 for ours; a pretrained model may have another), not a constant."""
    from types import SimpleNamespace

    from ddpm_ood.detectors import detector_class
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    cls = detector_class(name)
    model = SimpleNamespace(schedule=DDPMSchedule(num_timesteps=50))
    assert cls.from_args(SimpleNamespace(**{cls.knob: 50}), model).nfe() == 50
    with pytest.raises(DataError, match=f"--{cls.knob} 51: .*the model has 50 timesteps"):
        cls.from_args(SimpleNamespace(**{cls.knob: 51}), model)
