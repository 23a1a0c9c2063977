"""UNet: shapes, gradients, determinism, attention against a hand-written softmax."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIG
from ddpm_ood.models.config import build_unet, load_config
from ddpm_ood.models.unet import AttentionBlock, UNet, timestep_embedding


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_output_shape_equals_input_shape(size, channels):
    model = UNet(in_channels=channels, out_channels=channels, model_channels=8, channel_mult=(1, 2, 3),
                 num_res_blocks=1, attention_resolutions=(2, 4), num_groups=4)
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_scale_shift_norm_and_resblock_updown_variants():
    model = UNet(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                 num_heads=2, use_scale_shift_norm=True, resblock_updown=True, num_groups=4)
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([5, 6])).shape == x.shape


def test_backward_reaches_every_parameter():
    model = build_unet(load_config(TINY_CONFIG))
    x = torch.randn(3, 1, 28, 28)
    (model(x, torch.tensor([1, 2, 3])) - torch.randn_like(x)).pow(2).mean().backward()
    # Zero-initialised output layers give zero gradients further in on the first step, but
    # every parameter must be connected to the loss.
    assert all(p.grad is not None for p in model.parameters())
    assert model.out[-1].weight.grad.abs().sum() > 0


def test_seeded_models_and_forwards_agree():
    cfg = load_config(TINY_CONFIG)
    torch.manual_seed(3)
    a = build_unet(cfg).eval()
    torch.manual_seed(3)
    b = build_unet(cfg).eval()
    x = torch.randn(2, 1, 28, 28)
    t = torch.tensor([10, 500])
    torch.testing.assert_close(a(x, t), b(x, t), rtol=0, atol=0)
    torch.testing.assert_close(a(x, t), a(x, t), rtol=0, atol=0)


def test_attention_matches_plain_softmax():
    torch.manual_seed(0)
    block = AttentionBlock(8, num_heads=2, num_groups=4)
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 8, 3, 3)
    qkv = block.qkv(block.norm(x).reshape(2, 8, 9)).reshape(2, 3, 2, 4, 9)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, C/heads, L)
    weights = torch.softmax(torch.einsum("bhcl,bhcm->bhlm", q, k) / 4**0.5, dim=-1)
    h = torch.einsum("bhlm,bhcm->bhcl", weights, v).reshape(2, 8, 9)
    expected = x + block.proj_out(h).reshape(2, 8, 3, 3)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_inputs_suit_the_fused_kernels():
    # The flash kernel refuses q, k, v whose last dimension is not contiguous (the check is
    # the same on CUDA), leaving only the slow math kernel; the block must not hit that.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    block = AttentionBlock(64, num_heads=4, num_groups=32)
    x = torch.randn(2, 64, 7, 7)
    with sdpa_kernel(SDPBackend.MATH):
        expected = block(x)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 1]), 4)
    # dim 4: frequencies 1 and 1e-2; [cos, cos, sin, sin]
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(emb[1], torch.tensor([torch.cos(torch.tensor(1.0)), torch.cos(torch.tensor(0.01)),
                                                     torch.sin(torch.tensor(1.0)), torch.sin(torch.tensor(0.01))]))


def test_paper_configs_build_and_attend_at_factors_2_and_4():
    from pathlib import Path

    for name, channels in [("diffusion_grayscale.yaml", 1), ("diffusion_colour.yaml", 3)]:
        cfg = load_config(Path(TINY_CONFIG).parent / name)
        assert cfg.ldm.base_lr == 2.5e-5 and cfg.ldm.params.unet_config.params.model_channels == 256
        assert cfg.ldm.params.unet_config.params.in_channels == channels
    model = UNet(model_channels=32, channel_mult=(1, 2, 3), num_res_blocks=2, attention_resolutions=(8, 4, 2))
    n_attention = sum(isinstance(m, AttentionBlock) for m in model.modules())
    # factors 2 and 4: 2 blocks down + 3 up at each, plus the middle block
    assert n_attention == 2 * (2 + 3) + 1


@pytest.mark.slow
def test_paper_unet_traces_as_one_graph():
    """torch.compile sees the whole UNet at once: a graph break would split it into pieces run
    back to back through Python, losing fusion across the break."""
    from pathlib import Path

    import torch._dynamo

    torch.manual_seed(0)
    model = build_unet(load_config(Path(TINY_CONFIG).parent / "diffusion_grayscale.yaml")).eval()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(torch.rand(2, 1, 28, 28), torch.full((2,), 5))
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_group_norms_use_latent_diffusions_epsilon():
    """The paper's UNet normalises with eps = 1e-6 (nn.GroupNorm's default is 1e-5)."""
    model = build_unet(load_config(TINY_CONFIG)).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) > 5 and all(m.eps == 1e-6 for m in norms)
    # The config can ask for another epsilon (norm_eps), and the value changes the output.
    old = build_unet(load_config(TINY_CONFIG, ["ldm.params.unet_config.params.norm_eps=1e-5"])).eval()
    old.load_state_dict(model.state_dict())
    assert all(m.eps == 1e-5 for m in old.modules() if isinstance(m, torch.nn.GroupNorm))
    torch.manual_seed(0)
    for p in model.out[-1].parameters():
        torch.nn.init.normal_(p)  # zero-initialised output layer would hide every difference
    old.load_state_dict(model.state_dict())
    x = 0.5 + 1e-3 * torch.randn(1, 1, 28, 28)  # nearly constant: the epsilon matters
    assert not torch.allclose(model(x, torch.tensor([3])), old(x, torch.tensor([3])), atol=1e-6)
