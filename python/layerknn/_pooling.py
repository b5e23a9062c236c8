"""Pool one batch of hidden states into rows of a preallocated output buffer.

Extraction hooks receive a padded batch ``(B, T, d)`` per layer; ``BatchPooler`` reduces it
to ``(B, d)`` right away (last real token, mean over real tokens, or mean excluding a leading
BOS) in float32, and writes the result into ``values[slot, rows]`` on the buffer's device, so
no full per-layer hidden states are ever kept. Batches are right-padded, so real tokens of
row ``b`` occupy positions ``0 .. token_count[b] - 1``.
"""

from __future__ import annotations

import torch

POOLINGS = ("last", "mean", "mean_no_bos")


def check_pooling(pooling) -> str:
    """Validate a pooling name (ValueError naming the choices)."""
    if not isinstance(pooling, str) or pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(repr(p) for p in POOLINGS)}, got {pooling!r}")
    return pooling


class BatchPooler:
    """Pools hidden states of one right-padded batch into ``values[slot, rows]``.

    Parameters
    ----------
    values : torch.Tensor
        Output buffer ``(S, n, d)``; rows of this batch are written in place.
    rows : torch.Tensor
        ``(B,)`` int64 indices into ``values``' second axis (the prompts' input order).
    token_counts : torch.Tensor
        ``(B,)`` int64 number of real tokens per row (>= 1).
    skip_first : torch.Tensor
        ``(B,)`` bool; for ``"mean_no_bos"``, whether position 0 is a BOS to leave out
        (ignored for rows whose only token is that BOS: they pool the BOS itself).
    pooling : str
        One of ``POOLINGS``.
    """

    def __init__(self, values, rows, token_counts, skip_first, pooling: str):
        self.values = values
        self.rows = rows.to(values.device)
        self.token_counts = token_counts
        self.skip_first = skip_first
        self.pooling = check_pooling(pooling)
        self._weights_by_device: dict = {}
        self._last_index_by_device: dict = {}

    def _mean_weights(self, device, length: int) -> torch.Tensor:
        """(B, T) float32 weights: 1/count on pooled positions, 0 on pads (and skipped BOS)."""
        key = (device, length)
        weights = self._weights_by_device.get(key)
        if weights is None:
            counts = self.token_counts.to(device)
            positions = torch.arange(length, device=device)
            mask = positions[None, :] < counts[:, None]
            if self.pooling == "mean_no_bos":
                skip = self.skip_first.to(device) & (counts > 1)
                mask = mask & ~(skip[:, None] & (positions[None, :] == 0))
            mask = mask.to(torch.float32)
            weights = mask / mask.sum(dim=1, keepdim=True)
            self._weights_by_device[key] = weights
        return weights

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Reduce ``hidden`` ``(B, T, d)`` to float32 ``(B, d)`` on ``hidden``'s device."""
        if self.pooling == "last":
            index = self._last_index_by_device.get(hidden.device)
            if index is None:
                index = (self.token_counts.to(hidden.device) - 1).clamp_min(0)
                self._last_index_by_device[hidden.device] = index
            batch = torch.arange(hidden.shape[0], device=hidden.device)
            return hidden[batch, index].to(torch.float32)
        weights = self._mean_weights(hidden.device, hidden.shape[1])
        # Accumulate in float32 even for bf16/fp16 models.
        return torch.einsum("btd,bt->bd", hidden.to(torch.float32), weights)

    def write(self, slot: int, hidden: torch.Tensor) -> None:
        """Pool ``hidden`` and store it at ``values[slot, rows]`` (moved to the buffer's device)."""
        pooled = self.pool(hidden.detach())
        self.values[slot].index_copy_(0, self.rows, pooled.to(self.values.device, self.values.dtype))
