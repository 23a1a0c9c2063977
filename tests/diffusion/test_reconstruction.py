"""The fused multi-start loop equals the one-trajectory-at-a-time loop; noise is batch-independent."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG
from ddpm_ood.diffusion.ddpm import PLMSSampler
from ddpm_ood.diffusion.reconstruction import (
    image_keys,
    measure_split,
    noise_seed,
    reconstruct_fused,
    reconstruct_sequential,
    start_noise,
)
from ddpm_ood.models.config import build_schedule, load_config
from helpers.oracles import tiny_unet_with_weights


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_unet_with_weights()


def reconstruction_case(schedule, n_steps, skip, batch, seed):
    """A sampler on an n_steps grid, its start points grid[::skip], `batch` random 28x28 images
    and their start noise: the inputs every reconstruction test needs."""
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(n_steps)
    starts = sampler.start_indices(skip)
    x0 = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    noise = start_noise((1, 28, 28), 0, range(batch), sampler.grid[starts])
    return sampler, starts, x0, noise


@pytest.mark.slow
@pytest.mark.parametrize("n_steps,skip,batch", [(20, 1, 1), (20, 3, 4), (20, 7, 3), (20, 20, 2), (10, 4, 5)])
def test_fused_equals_sequential(tiny_model, n_steps, skip, batch):
    model, schedule = tiny_model
    sampler, starts, x0, noise = reconstruction_case(schedule, n_steps, skip, batch, seed=1)
    sequential = reconstruct_sequential(model, schedule, sampler, x0, starts, noise)
    fused = reconstruct_fused(model, schedule, sampler, x0, starts, noise)
    assert fused.shape == (batch, len(starts), 1, 28, 28)
    assert sequential.std() > 0.05  # a real signal, not all zeros
    torch.testing.assert_close(fused, sequential, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_fused_handles_unsorted_starts(tiny_model):
    model, schedule = tiny_model
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(10)
    x0 = torch.rand(2, 1, 28, 28)
    starts = np.array([5, 0, 9, 2])
    noise = start_noise((1, 28, 28), 3, [0, 1], sampler.grid[starts])
    torch.testing.assert_close(
        reconstruct_fused(model, schedule, sampler, x0, starts, noise),
        reconstruct_sequential(model, schedule, sampler, x0, starts, noise), atol=1e-4, rtol=1e-4)


def test_model_evaluations_per_image_match_the_paper():
    """100 PLMS steps, skip 16: 7 trajectories of j + 1 steps plus one corrector each = 350."""
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    schedule = DDPMSchedule()
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(100)
    starts = sampler.start_indices(16)
    for reconstruct in (reconstruct_sequential, reconstruct_fused):
        evaluated = []
        model = lambda x, t: evaluated.append(len(x)) or torch.zeros_like(x)
        reconstruct(model, schedule, sampler, torch.zeros(3, 1, 2, 2), starts, torch.zeros(3, len(starts), 1, 2, 2))
        assert sum(evaluated) == 350 * 3
    assert len(evaluated) == 97 + 7  # fused: one call per grid point up to t = 961, one corrector per start


def test_noise_depends_only_on_seed_image_and_t():
    batch = start_noise((1, 4, 4), 7, [10, 11, 12], [1, 161])
    alone = start_noise((1, 4, 4), 7, [11], [161])
    torch.testing.assert_close(batch[1, 1], alone[0, 0], rtol=0, atol=0)
    assert not torch.equal(batch[0, 0], batch[0, 1]) and not torch.equal(batch[0, 0], batch[1, 0])
    assert noise_seed(0, 1, 2) != noise_seed(0, 2, 1) != noise_seed(1, 1, 2)
    assert not torch.equal(start_noise((4,), 8, [10], [1]), start_noise((4,), 7, [10], [1]))


@pytest.mark.slow
def test_an_images_noise_comes_from_its_pixels_alone(tiny_model):
    """Issue 18: image i of a set used to get the noise of index i, so one image scored differently
    depending on where it stood. Its noise now comes from a hash of its pixels."""
    a, b = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    assert image_keys(torch.stack([a, b])) == image_keys(torch.stack([a, b]).double())  # what they show, hashed
    key_a, key_b = image_keys(torch.stack([a, b]))
    assert key_a != key_b and image_keys(torch.stack([b, a, a])) == [key_b, key_a, key_a]
    model, schedule = tiny_model
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(10)
    run = lambda images, batch: measure_split(model, schedule, sampler, images, [str(i) for i in range(len(images))],
                                              "x", sampler.start_indices(3), batch, 0, torch.device("cpu"),
                                              progress=False)
    ab, baa = run(torch.stack([a, b]), 2), run(torch.stack([b, a, a]), 1)  # other positions, companions, batches
    mse = lambda frame, i: frame.loc[frame["image_index"] == i, "mse"].to_numpy()
    np.testing.assert_allclose(mse(ab, 0), mse(baa, 1), rtol=1e-6)
    np.testing.assert_array_equal(mse(baa, 1), mse(baa, 2))  # a duplicate gets the same numbers
    np.testing.assert_allclose(mse(ab, 1), mse(baa, 0), rtol=1e-6)


def test_noise_is_a_function_of_what_the_image_shows_not_of_float_rounding(tiny_model):
    """Main before this: changing one pixel by one float step redrew all the start noise (a score std
    of 0.19 for the paper's score). The key is now of the pixels at 8-bit precision; the earlier,
    float32 one stays for results made with it."""
    x = (torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28) % 255) / 255 + 0.3 / 255
    nudged = x.clone()
    nudged[0, 0, 5, 5] = torch.nextafter(nudged[0, 0, 5, 5], torch.tensor(2.0))  # one float step
    shown = x.clone()
    shown[0, 0, 5, 5] += 1 / 255  # one grey level: another image
    assert image_keys(nudged) == image_keys(x) != image_keys(shown)
    assert image_keys(nudged, "pixels-sha256") != image_keys(x, "pixels-sha256")  # the earlier scheme
    assert image_keys(x[:, :, :, :27]) != image_keys(x[:, :, :, 1:])  # the shape counts too
    with pytest.raises(ValueError, match="unknown noise scheme"):
        image_keys(x, "pixels-md5")


@pytest.mark.slow
def test_several_noise_draws_average_the_metrics_of_each_draw(tiny_model):
    model, schedule = tiny_model
    sampler, starts, images, _ = reconstruction_case(schedule, 10, 3, 3, 6)
    run = lambda **k: measure_split(model, schedule, sampler, images, ["a", "b", "c"], "val", starts, 3, 0,
                                    torch.device("cpu"), progress=False, **k)["mse"].to_numpy()
    one, two = run(), run(draws=2)
    noise = start_noise((1, 28, 28), 0, image_keys(images), sampler.grid[starts], draw=1)
    recon = reconstruct_fused(model, schedule, sampler, images, starts, noise).clamp(0, 1)  # (B, K, C, H, W)
    second = ((images[:, None] - recon) ** 2).flatten(2).mean(2).flatten().numpy()  # (B*K,), image-major
    np.testing.assert_allclose(two, (one + second) / 2, rtol=1e-5)
    assert not np.allclose(one, second)  # draw 1 is another draw


@pytest.mark.slow
def test_the_maps_of_several_noise_draws_average_every_draw_as_the_scores_do(tiny_model):
    """Issue 33, wording: with --noise_draws K the maps used draw 0 alone. Now each map, averaged over its pixels,
    is the MSE its scores hold: the same draws, averaged alike."""
    from ddpm_ood.diffusion.reconstruction import reconstruction_examples
    from ddpm_ood.evaluation.anomaly_maps import error_maps

    model, schedule = tiny_model
    sampler, starts, images, _ = reconstruction_case(schedule, 10, 3, 3, 6)
    mse = measure_split(model, schedule, sampler, images, ["a", "b", "c"], "val", starts, 3, 0, torch.device("cpu"),
                        progress=False, draws=2)["mse"].to_numpy().reshape(3, len(starts))
    examples = reconstruction_examples(model, schedule, sampler, images, starts, 0, torch.device("cpu"), draws=2)
    assert examples["more_reconstructions"].shape == (3, 1, len(starts), 1, 28, 28)
    np.testing.assert_allclose(error_maps(examples).mean(axis=(2, 3)), mse, rtol=1e-4)
    one = reconstruction_examples(model, schedule, sampler, images, starts, 0, torch.device("cpu"))
    np.testing.assert_array_equal(one["reconstructions"], examples["reconstructions"])  # draw 0: the figures'
    assert "more_reconstructions" not in one


@pytest.mark.slow
def test_measure_split_is_independent_of_batch_size_and_implementation(tiny_model):
    model, schedule = tiny_model
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(10)
    starts = sampler.start_indices(3)
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    names = [f"img{i}" for i in range(5)]
    run = lambda bs, fused: measure_split(model, schedule, sampler, images, names, "val", starts, bs, 0,
                                          torch.device("cpu"), fused=fused, progress=False)
    reference = run(5, True)
    assert list(reference.columns) == ["filename", "image_index", "type", "t", "mse", "perceptual_difference"]
    assert len(reference) == 5 * len(starts)
    assert reference["t"].tolist()[:4] == [1, 301, 601, 901]
    assert reference["filename"].tolist()[:5] == ["img0"] * 4 + ["img1"]
    for other in (run(2, True), run(3, False)):
        np.testing.assert_allclose(other["mse"], reference["mse"], rtol=1e-4, atol=1e-7)
    # The error grows with the start t on average: more noise, worse reconstruction.
    by_t = reference.groupby("t")["mse"].mean()
    assert by_t.iloc[-1] > by_t.iloc[0]


def test_chunked_unet_calls_give_the_same_reconstructions(tiny_model):
    from ddpm_ood.models.loading import in_chunks

    model, schedule = tiny_model
    sampler, starts, x0, noise = reconstruction_case(schedule, 10, 2, 4, seed=5)
    calls = []
    counted = lambda x, t: calls.append(len(x)) or model(x, t)
    chunked = reconstruct_fused(in_chunks(counted, 3), schedule, sampler, x0, starts, noise)
    assert max(calls) == 3
    torch.testing.assert_close(chunked, reconstruct_sequential(model, schedule, sampler, x0, starts, noise),
                               atol=1e-4, rtol=1e-4)
    assert in_chunks(model, None) is model and in_chunks(model, 0) is model


def test_fused_loop_never_reads_device_values_on_the_host(tiny_model, monkeypatch):
    """On a GPU each .item(), .cpu(), .tolist() or tensor truth test stalls the pipeline; the fused
    sampler loop (model included) must not use any of them."""
    model, schedule = tiny_model
    sampler, starts, x0, noise = reconstruction_case(schedule, 10, 3, 2, seed=6)

    def forbidden(name):
        def fail(self, *args, **kwargs):
            raise AssertionError(f"host synchronisation: Tensor.{name}")
        return fail

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    out = reconstruct_fused(model, schedule, sampler, x0, starts, noise)
    monkeypatch.undo()
    assert out.shape == (2, len(starts), 1, 28, 28)


@pytest.mark.slow
def test_compiled_unet_compiles_once_for_every_call_shape(tiny_model, monkeypatch):
    """The fused loop calls the UNet on B, 2B, ... images with expanded timesteps; torch.compile
    must not recompile for each (compile time, and past dynamo's recompile limit the model falls
    back to eager). Dynamo's eager backend keeps this test fast."""
    import functools

    import torch._dynamo

    from ddpm_ood.models.loading import unet_caller

    model, schedule = tiny_model
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    caller = unet_caller(model, torch.device("cpu"), compile_model=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in (3, 2):  # a full batch, then a smaller last one
            sampler, starts, x0, noise = reconstruction_case(schedule, 10, 3, batch, seed=7)
            fused = reconstruct_fused(caller, schedule, sampler, x0, starts, noise)
            torch.testing.assert_close(fused, reconstruct_fused(model, schedule, sampler, x0, starts, noise),
                                       atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("channels,clamp_for_lpips,lpips_sees_clamped", [
    (1, False, True),   # grayscale: the paper clamps before LPIPS
    (3, False, False),  # colour: the paper scores LPIPS on the unclamped reconstruction
    (3, True, True),    # --clamp_for_lpips
])
def test_lpips_sees_the_clamped_reconstruction_only_where_the_paper_clamped(channels, clamp_for_lpips,
                                                                            lpips_sees_clamped):
    schedule = build_schedule(load_config(TINY_CONFIG))
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(10)
    overshoot = lambda x, t: torch.full_like(x, -2.0)  # drives reconstructions far above 1
    largest = lambda a, b: b.flatten(1).amax(1)  # an "LPIPS" that reports what it was given
    images = torch.rand(2, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    frame = measure_split(overshoot, schedule, sampler, images, ["a", "b"], "x", [9], 2, 0, torch.device("cpu"),
                          lpips_metric=largest, progress=False, clamp_for_lpips=clamp_for_lpips)
    assert (frame["perceptual_difference"] <= 1).all() == lpips_sees_clamped
    assert (frame["perceptual_difference"] > 1.5).all() == (not lpips_sees_clamped)
    # MSE always compares with the clamped reconstruction.
    raw = reconstruct_fused(overshoot, schedule, sampler, images, [9], start_noise(images.shape[1:], 0, image_keys(images), [901]))
    assert raw.max() > 1.5
    expected = ((images - raw[:, 0].clamp(0, 1)) ** 2).flatten(1).mean(1).numpy()
    np.testing.assert_allclose(frame["mse"], expected, rtol=1e-5)
