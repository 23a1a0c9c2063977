"""The eps-prediction UNet, in the style of the improved-diffusion / latent-diffusion UNet.

``UNet.forward(x, timesteps) -> eps`` knows nothing of the noise schedule. Hyper-parameters
use latent-diffusion's names: ``attention_resolutions`` are *downsampling factors* (with
``channel_mult=[1, 2, 3]`` the levels have factors 1, 2, 4, so ``[8, 4, 2]`` puts attention
at factors 2 and 4, plus the middle block, which always has it).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps -> (N, dim), as in improved-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


# latent-diffusion (the paper's UNet) builds its normalisation layers with eps = 1e-6,
# not nn.GroupNorm's default 1e-5; with the same weights the outputs differ.
NORM_EPS = 1e-6


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 2D or 3D convolution (improved-diffusion's ``conv_nd``)."""
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float,
                 use_scale_shift_norm: bool, num_groups: int, norm_eps: float = NORM_EPS, up: bool = False,
                 down: bool = False, dims: int = 2):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = nn.GroupNorm(num_groups, channels, eps=norm_eps)
        self.in_conv = conv_nd(dims, channels, out_channels, 3, padding=1)
        self.resample = Upsample(channels, False, dims) if up else Downsample(channels, False, dims) if down else \
            nn.Identity()
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.out_norm = nn.GroupNorm(num_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(conv_nd(dims, out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else conv_nd(dims, channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(self.resample(h))
        x = self.resample(x)
        emb_out = self.emb_proj(F.silu(emb))
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))  # (B, C or 2C, 1, 1[, 1])
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + emb_out)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, via scaled_dot_product_attention."""

    def __init__(self, channels: int, num_heads: int, num_groups: int, norm_eps: float = NORM_EPS):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels, eps=norm_eps)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        length = math.prod(spatial)  # every position of an image or a volume
        tokens = self.norm(x).reshape(b, c, length).transpose(1, 2)  # (B, L, C)
        # The 1x1 qkv convolution as a matmul on the tokens gives (B, L, 3C) with channels last:
        # the fused attention kernels (flash, memory-efficient) need a unit stride along
        # C/heads and fall back to the slow math kernel otherwise.
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # channel = (3, heads, C/heads)
        qkv = qkv.reshape(b, length, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, C/heads)
        h = h.permute(0, 1, 3, 2).reshape(b, c, length)
        return x + self.proj_out(h).reshape(x.shape)


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, dims: int = 2):
        super().__init__()
        pool = nn.AvgPool2d(2) if dims == 2 else nn.AvgPool3d(2)
        self.op = conv_nd(dims, channels, channels, 3, stride=2, padding=1) if use_conv else pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, dims: int = 2):
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        # Upsample to the skip connection's size: 7 -> 14 for 28x28 inputs, whatever the rounding.
        x = F.interpolate(x, size=size, mode="nearest") if size is not None else F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x)


class TimestepSequential(nn.Sequential):
    """A sequence of layers, some of which take the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        model_channels: int = 256,
        channel_mult: Sequence[int] = (1, 2, 3),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (8, 4, 2),
        num_heads: int = 1,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        conv_resample: bool = True,
        num_groups: int = 32,
        norm_eps: float = NORM_EPS,
        dims: int = 2,
    ):
        super().__init__()
        self.model_channels = model_channels
        self.dims = dims
        emb_channels = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        res = dict(emb_channels=emb_channels, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm,
                   num_groups=num_groups, norm_eps=norm_eps, dims=dims)
        attn = dict(num_heads=num_heads, num_groups=num_groups, norm_eps=norm_eps)

        self.input_blocks = nn.ModuleList([TimestepSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=mult * model_channels, **res)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = ResBlock(ch, out_channels=ch, down=True, **res) if resblock_updown else Downsample(ch, conv_resample, dims)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(
            ResBlock(ch, out_channels=ch, **res), AttentionBlock(ch, **attn), ResBlock(ch, out_channels=ch, **res)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), out_channels=mult * model_channels, **res)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, out_channels=ch, up=True, **res) if resblock_updown else Upsample(ch, conv_resample, dims))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(num_groups, ch, eps=norm_eps), nn.SiLU(), zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), or (B, C, D, H, W) with dims=3; timesteps: (B,) integer steps in [0, T).
        Returns eps, of x's shape."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1)
            # The skip popped next has the resolution this block must upsample to.
            target = skips[-1].shape[2:] if skips else None
            h = block(h, emb, target)
        return self.out(h)


def compile_unet(model: nn.Module):
    """``torch.compile(model)`` called so that one graph serves every batch size.

    Training ends each epoch on a smaller batch and the fused sampler calls the UNet on B, 2B,
    ... K x B images with timesteps expanded from one grid entry. Without care torch.compile
    recompiles for a new batch size and guards on the timesteps' stride and storage offset:
    every recompilation of a large UNet costs minutes of compile time, and past dynamo's
    recompile limit (8) the model falls back to eager with only a warning. So the batch
    dimension is marked dynamic and the timesteps are passed as a plain tensor.
    """
    net = torch.compile(model)

    def call(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        timesteps = timesteps.contiguous()
        torch._dynamo.maybe_mark_dynamic(x, 0)
        torch._dynamo.maybe_mark_dynamic(timesteps, 0)
        return net(x, timesteps)

    return call

