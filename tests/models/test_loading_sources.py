"""The contract of the model sources (``ddpm_ood.models.loading.SOURCES``), over the registry: each
recognises the layout of its own kind and no earlier source takes it, ``--pretrained`` picks it by
asking each in turn, and one network record comes out of every kind."""
from __future__ import annotations

import json

import pytest
import torch

from ddpm_ood.models.loading import SOURCES, DiffusersModel, RunModel, load_model, pretrained_source
from ddpm_ood.models.spaces import ModelSpace, Network, PixelSpace


def run_folder(folder):
    (folder / "best_model.pth").write_bytes(b"")


def bundle_folder(folder):
    (folder / "configs").mkdir()
    (folder / "models").mkdir()


def ddpm_ood_folder(folder):
    (folder / "args.json").write_text(json.dumps({}))
    (folder / "checkpoint.pth").write_bytes(b"")


def diffusers_folder(folder):
    (folder / "config.json").write_text(json.dumps({}))


# How a folder of each kind is laid out (enough to be recognised; not loadable).
LAYOUTS = {"run": run_folder, "monai-bundle": bundle_folder, "ddpm-ood": ddpm_ood_folder,
           "diffusers": diffusers_folder}


def layout(kind: str, folder):
    folder.mkdir(parents=True)
    LAYOUTS[kind](folder)
    return folder


def test_every_registered_source_has_a_layout_here():
    assert set(LAYOUTS) == set(SOURCES), "a new source: add its layout to LAYOUTS"


@pytest.mark.parametrize("kind", list(SOURCES))
def test_each_source_recognises_its_own_layout_and_is_the_one_chosen(kind, tmp_path):
    folder = layout(kind, tmp_path / kind)
    order = list(SOURCES)
    assert SOURCES[kind].recognises(str(folder))
    earlier = [other for other in order[:order.index(kind)] if SOURCES[other].recognises(str(folder))]
    assert not earlier, f"{earlier} would take a {kind} folder first"
    chosen = pretrained_source(str(folder))
    assert type(chosen) is SOURCES[kind]


def test_a_hub_id_goes_to_diffusers_and_a_run_folder_to_its_best_model(tmp_path):
    assert type(pretrained_source("google/ddpm-cifar10-32")) is DiffusersModel
    run = layout("run", tmp_path / "run")
    (run / "final_model.pth").write_bytes(b"")
    assert pretrained_source(str(run)) == RunModel(run / "best_model.pth")


def test_our_run_given_to_pretrained_is_the_same_model(tiny_run):
    """--pretrained <one of our run folders> loads that run's model (it used to be taken for a diffusers
    folder and refused for having no UNet config)."""
    _, run, _ = tiny_run
    by_folder, by_file = load_model(pretrained_source(str(run))), load_model(run / "best_model.pth")
    assert by_folder.identity == by_file.identity and by_folder.source == by_file.source


def test_a_run_builds_the_one_network_record_with_a_model_space(tiny_run):
    network = RunModel(tiny_run[1] / "best_model.pth").load()
    assert isinstance(network, Network) and isinstance(network.space, PixelSpace)
    assert isinstance(network.space, ModelSpace)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(network.space.decode(network.space.encode(x)), x)
    assert network.space.to("cpu") is network.space


def test_both_spaces_are_model_spaces():
    from ddpm_ood.models.autoencoders import FIRST_STAGES
    from ddpm_ood.models.first_stage import LatentSpace, build_autoencoder

    network = FIRST_STAGES["vqvae"].example_network(2, 1)
    latent = LatentSpace(build_autoencoder("vqvae", network), "vqvae", network, (1, 16, 16))
    assert isinstance(latent, ModelSpace) and isinstance(PixelSpace(), ModelSpace)
    assert not isinstance(object(), ModelSpace)
