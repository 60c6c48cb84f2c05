"""The resumable minibatch stream the trainer draws from."""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _checks
from ._args import _generator_device
from .dataset import Dataset


class BatchStream:
    """An endless stream of random minibatches (B, *shape) that can be saved and resumed exactly.

    The stream is a concatenation of epochs; each epoch is a fresh ``torch.randperm`` of the data
    (and, with ``flip``, one fair coin per position for a horizontal flip), both drawn from the
    generator when the epoch starts. Batches are consecutive slices of that stream, so every batch
    has exactly ``batch_size`` samples (a batch may straddle two epochs) and every sample is seen
    exactly once per epoch.

    Because an epoch is fixed by the generator's state at its start, ``state_dict()`` is just
    (epoch, position, that state as a uint8 tensor): a stream restored with ``load_state_dict``
    yields exactly the batches the saved one would have yielded next.

    Args:
        dataset: a Dataset, or a tensor (N, ...) of samples (4-D counts as images).
        batch_size: samples per batch.
        seed: seeds a private CPU generator (ignored if ``generator`` is given).
        flip: flip each image left-right with probability 1/2 (image data only).
        generator: draw from this generator instead (it is advanced by the stream). For an exact
            resume the stream should own its generator: ``load_state_dict`` rewinds it to the
            current epoch's start and replays that epoch's draws, undoing any other use since.
        labels: yield (images, labels) pairs, the labels (B,) int64 of the same samples (a Dataset
            with ``labels`` only, e.g. to train a class-conditional model). The order and the state
            are those of the stream without labels.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, flip: bool = False, *,
                 generator: Optional[torch.Generator] = None, labels: bool = False):
        self.labels: Optional[Tensor] = None
        if labels:
            if not isinstance(dataset, Dataset) or dataset.labels is None:
                what = f"data set {dataset.name!r}" if isinstance(dataset, Dataset) else type(dataset).__name__
                raise ValueError(f"labels=True needs a Dataset with class labels, got the {what} without labels")
            self.labels = dataset.labels.to(dataset.data.device)
        if isinstance(dataset, Dataset):
            self.data, is_image = dataset.data, dataset.is_image
        elif torch.is_tensor(dataset) and dataset.dim() >= 1:
            self.data, is_image = dataset, dataset.dim() == 4
        else:
            raise ValueError(f"dataset must be a Dataset or a tensor (N, ...), got {type(dataset).__name__}")
        if len(self.data) == 0:
            raise ValueError("dataset must hold at least one sample, got an empty one")
        self.batch_size = _checks.positive_int(batch_size, "batch_size")
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be True or False, got {flip!r}")
        if flip and not is_image:
            raise ValueError("flip=True needs image data (samples of shape (C, H, W))")
        self.flip = flip
        if generator is None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            generator = torch.Generator().manual_seed(seed)
        _generator_device(generator)
        self.generator = generator
        self.epoch = 0                      # epochs started so far
        self.position = 0                   # samples of the current epoch already yielded
        self._epoch_state: Optional[Tensor] = None     # generator state where the current epoch began
        self._order: Optional[Tensor] = None
        self._flips: Optional[Tensor] = None

    def __len__(self) -> int:
        """Number of samples in the data set (batches never run out)."""
        return len(self.data)

    def __iter__(self) -> Iterator[Union[Tensor, Tuple[Tensor, Tensor]]]:
        return self

    def _draw_epoch(self) -> None:
        """Draw the current epoch's order (and flips) from the generator, advancing it."""
        g = self.generator
        self._order = torch.randperm(len(self.data), generator=g, device=g.device).to(self.data.device)
        self._flips = (torch.rand(len(self.data), generator=g, device=g.device) < 0.5).to(self.data.device) \
            if self.flip else None

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        self._draw_epoch()
        self.epoch += 1
        self.position = 0

    def __next__(self) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        pieces, label_pieces, need = [], [], self.batch_size
        while need > 0:
            if self._order is None or self.position == len(self.data):
                self._start_epoch()
            k = min(need, len(self.data) - self.position)
            sl = slice(self.position, self.position + k)
            x = self.data[self._order[sl]]
            if self._flips is not None:
                x = torch.where(self._flips[sl].view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
            pieces.append(x)
            if self.labels is not None:
                label_pieces.append(self.labels[self._order[sl].to(self.labels.device)])
            self.position += k
            need -= k
        x = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        if self.labels is None:
            return x
        return x, (label_pieces[0] if len(label_pieces) == 1 else torch.cat(label_pieces))

    def state_dict(self) -> Dict[str, object]:
        """{"epoch", "position", "generator" (uint8 state at the current epoch's start), "num_samples", "flip"}."""
        # Before the first batch no epoch has been drawn: the generator's current state starts it.
        gstate = self.generator.get_state() if self._order is None else self._epoch_state.clone()
        return {"epoch": self.epoch, "position": self.position, "generator": gstate,
                "num_samples": len(self.data), "flip": self.flip}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Continue exactly where the stream that made ``state`` was. The batch size may differ (the
        stream of samples is the same), the data set's size and ``flip`` may not."""
        try:
            epoch, position, gstate = int(state["epoch"]), int(state["position"]), state["generator"]
            num_samples, flip = int(state["num_samples"]), bool(state["flip"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"state must be a BatchStream.state_dict(), got one without a valid {e}") from None
        if num_samples != len(self.data) or flip != self.flip:
            raise ValueError(f"state was saved for {num_samples} samples with flip={flip}, but this stream has "
                             f"{len(self.data)} samples with flip={self.flip}")
        if not (0 <= position <= num_samples) or epoch < 0 or (epoch == 0 and position != 0):
            raise ValueError(f"state has an impossible position: epoch {epoch}, position {position} of {num_samples}")
        if not torch.is_tensor(gstate) or gstate.dtype != torch.uint8:
            raise ValueError("state['generator'] must be a uint8 tensor (a torch.Generator state)")
        try:
            self.generator.set_state(gstate.cpu())      # generator states are CPU byte tensors on every device
        except RuntimeError as e:
            raise ValueError(f"state['generator'] does not fit this stream's generator: {e}") from None
        self._epoch_state = gstate.clone()
        self.epoch, self.position = epoch, position
        self._order = self._flips = None
        if epoch > 0:
            self._draw_epoch()     # replays the epoch's draws, leaving the generator where it was


def batches(dataset, batch_size: int, generator: torch.Generator, flip: bool = False) -> BatchStream:
    """An endless iterator of random minibatches drawn from ``generator`` (see BatchStream)."""
    if generator is None:
        raise ValueError("generator must be a torch.Generator (use BatchStream(dataset, batch_size, seed) for a seed)")
    return BatchStream(dataset, batch_size, flip=flip, generator=generator)
