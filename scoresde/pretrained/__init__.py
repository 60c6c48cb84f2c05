"""Pretrained models from elsewhere, imported as scoresde runs.

    from_score_sde(checkpoint, config, overrides=None, workdir=None): an official score_sde_pytorch
        checkpoint (Song et al.'s reference implementation) with the name of the reference config
        it was trained with (``ve/cifar10_ncsnpp_continuous``, ...): EMA weights, the config's SDE,
        network and data; ``scoresde import score-sde CHECKPOINT --config NAME --workdir RUN``.
    from_diffusers(folder, workdir=None): a diffusers UNet2DModel folder with its scheduler config;
        ``scoresde import diffusers FOLDER --workdir RUN``.

Each returns what ``scoresde.load`` returns, and with ``workdir`` writes a normal run directory
(config.yaml and a checkpoint in the trainer's format, with where it came from in its meta.json)
that every command (sample, likelihood, compare) and ``scoresde.load`` read unchanged. Nothing here
unpickles anything beyond tensors: checkpoints are read with ``torch.load(weights_only=True)``.
"""
from .score_sde import from_score_sde
from .diffusers import from_diffusers  # the diffusers library itself is imported only when a folder is read

__all__ = ["from_score_sde", "from_diffusers"]
