"""Activation (gradient) checkpointing of the networks' residual and attention blocks.

A block class that inherits ``Checkpointed`` (before ``nn.Module``) runs its call through
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` when its ``checkpoint_activations``
attribute is true and autograd is recording (``torch.is_grad_enabled()``): the forward pass keeps
only the block's inputs, and the backward pass recomputes the block's intermediate activations.
The result and the gradients are those of the plain call: the non-reentrant checkpoint restores
the CPU and CUDA random states for the recomputation (so dropout draws the same mask) and the
autocast state. Under ``torch.no_grad()`` (sampling, evaluation) a block runs as usual.

The switch is an instance attribute (off by default, not part of the state dict), set on every such
block of a network by ``enable_checkpointing(net)``. The blocks: ``unet.ResBlock`` / ``AttnBlock``
(U-Net and its classifier) and ``refblocks.ResnetBlockDDPM`` / ``ResnetBlockBigGAN`` / ``AttnBlock``
(NCSN++ / DDPM++ and DDPM). A diffusers model inside the network (``diffusers_unet.DiffusersUNet2D``
wraps diffusers' ``UNet2DModel``) is switched by its own ``enable_gradient_checkpointing()``, which
also uses the non-reentrant checkpoint, in its down, middle and up blocks.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed:
    """Mixin for an ``nn.Module`` block: checkpoint its call when ``checkpoint_activations`` is set
    and grad is enabled (see the module docstring)."""

    checkpoint_activations: bool = False

    def __call__(self, *args, **kwargs):
        if self.checkpoint_activations and torch.is_grad_enabled():
            return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)
        return super().__call__(*args, **kwargs)


def enable_checkpointing(net: nn.Module, enabled: bool = True) -> int:
    """Switch activation checkpointing on (or off) in every ``Checkpointed`` block of ``net`` and in
    every diffusers model inside it; returns the number of blocks switched (0: the network has none,
    e.g. the MLP)."""
    blocks = [m for m in net.modules() if isinstance(m, Checkpointed)]
    for m in blocks:
        m.checkpoint_activations = bool(enabled)
    for m in net.modules():
        if getattr(m, "_supports_gradient_checkpointing", False) and hasattr(m, "enable_gradient_checkpointing"):
            m.enable_gradient_checkpointing() if enabled else m.disable_gradient_checkpointing()
            # diffusers' blocks carry a ``gradient_checkpointing`` flag that the call above sets
            blocks += [b for b in m.modules() if b is not m and hasattr(b, "gradient_checkpointing")]
    return len(blocks)
