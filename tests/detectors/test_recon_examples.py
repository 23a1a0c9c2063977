"""The paper's detector keeps its examples as it measures them (reconstruct.py --save_examples / --save_maps):
the images kept are reconstructed once, and the kept examples equal the ones made again with the same noise."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ddpm_ood.detectors.recon import ReconDetector
from ddpm_ood.diffusion.reconstruction import reconstruction_examples
from helpers.oracles import tiny_unet_with_weights

CPU = torch.device("cpu")


def counted_model():
    """A tiny UNet with weights in its last layers (eps not 0), and a count of its calls."""
    unet, schedule = tiny_unet_with_weights()
    calls = []

    def model_fn(x, t):
        calls.append(len(x))
        with torch.no_grad():
            return unet(x, t)
    return SimpleNamespace(model_fn=model_fn, schedule=schedule, device=CPU, space=None), calls


def measured(detector, model, images, chunks):
    for start, stop in chunks:
        detector.measure(model, images[start:stop], [f"i{i}" for i in range(start, stop)], "val", 2, 7,
                         progress=False, index_offset=start)


def test_kept_examples_equal_the_ones_made_again_and_cost_no_model_call():
    model, calls = counted_model()
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    detector = ReconDetector(10, [1, 401, 901], ["mse"], noise_draws=2)
    detector.keep_examples(3)
    measured(detector, model, images, [(0, 2), (2, 5)])  # two chunks, batches of 2: the 3rd image in the second
    calls.clear()
    kept = detector.examples(model, images[:3], 7)
    assert calls == []  # nothing measured again
    detector.bind(model.schedule)
    again = reconstruction_examples(model.model_fn, model.schedule, detector._sampler, images[:3],
                                    detector.start_indices, 7, CPU, draws=2)
    assert set(kept) == set(again)
    np.testing.assert_array_equal(kept["t"], again["t"])
    np.testing.assert_array_equal(kept["inputs"], again["inputs"])
    np.testing.assert_allclose(kept["reconstructions"], again["reconstructions"], atol=1e-5)
    np.testing.assert_allclose(kept["more_reconstructions"], again["more_reconstructions"], atol=1e-5)
    assert kept["reconstructions"].shape == (3, 3, 1, 28, 28) and kept["more_reconstructions"].shape[1] == 1


def test_examples_are_made_again_when_measuring_did_not_see_them_all():
    """A resumed run measured the first chunk before: its images were not kept, so they are reconstructed again;
    a set's kept images never serve the next set's."""
    model, calls = counted_model()
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    detector = ReconDetector(10, [1, 401], ["mse"])
    detector.keep_examples(3)
    measured(detector, model, images, [(2, 5)])
    calls.clear()
    assert detector.examples(model, images[:3], 7)["reconstructions"].shape == (3, 2, 1, 28, 28)
    assert calls  # made again
    measured(detector, model, images, [(0, 2)])
    detector.keep_examples(3)  # the next set: what the last one kept goes
    calls.clear()
    detector.examples(model, images[:3], 7)
    assert calls
