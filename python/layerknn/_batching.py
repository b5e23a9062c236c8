"""How extraction splits length-sorted prompts into forward passes.

The prompts are sorted longest first and cut into consecutive batches. ``plan_batches`` is
the cost model behind ``batch_size="auto"`` (padding traded against the fixed cost of a
forward pass, within a token budget); ``fixed_batches`` serves an integer ``batch_size``.
``Planner`` holds the current limits, halves them on out-of-memory and replans from any
position. A plan depends only on the token counts, the options and the limits, so a rerun
of the same extraction plans the same batches; a resumed run also takes the limits and the
remaining plan stored with the last finished batch, so it replays even a backed-off schedule.
"""

from __future__ import annotations

import numpy as np
import torch


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a CUDA or CPU allocation failure."""
    out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch < 2.5
    if isinstance(error, out_of_memory):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def plan_batches(widths, max_batch: int, token_budget: int | None, overhead_tokens: float,
                 equal_widths_only: bool = False) -> list:
    """End index of each batch that splits prompts sorted longest-first with the least work.

    ``widths`` are the prompts' token counts in batch order (non-increasing). A batch of
    rows ``[i, j)`` is padded to ``widths[i]``, so it costs ``(j - i) * widths[i]`` tokens
    plus a fixed ``overhead_tokens`` per forward pass (Python, reading every weight once).
    Dynamic programming over the split points minimises the total; a batch holds at most
    ``max_batch`` rows and ``token_budget`` padded tokens (a lone prompt always fits).

    Examples
    --------
    >>> plan_batches([9, 2, 2, 1], max_batch=8, token_budget=None, overhead_tokens=4.0)
    [1, 4]
    """
    widths = np.asarray(widths, dtype=np.float64)
    n = len(widths)
    best = np.zeros(n + 1)  # best[j]: least cost of the first j prompts
    first = np.zeros(n + 1, dtype=np.int64)  # first row of the last batch in that plan
    for j in range(1, n + 1):
        lo = max(0, j - max_batch)
        rows = np.arange(j - lo, 0, -1)  # batch sizes j - i for i = lo .. j-1
        padded = rows * widths[lo:j]
        cost = best[lo:j] + overhead_tokens + padded
        if token_budget is not None:
            cost[(padded > token_budget) & (rows > 1)] = np.inf
        if equal_widths_only:
            cost[widths[lo:j] != widths[j - 1]] = np.inf
        k = int(np.argmin(cost))
        best[j], first[j] = cost[k], lo + k
    ends = []
    j = n
    while j > 0:
        ends.append(j)
        j = int(first[j])
    return ends[::-1]


def fixed_batches(widths, batch_size: int, equal_widths_only: bool = False) -> list:
    """End index of each batch of ``batch_size`` consecutive prompts (cut where widths change if asked).

    Examples
    --------
    >>> fixed_batches([5, 5, 3, 3, 3], 2), fixed_batches([5, 5, 3, 3, 3], 4, equal_widths_only=True)
    ([2, 4, 5], [2, 5])
    """
    ends, start = [], 0
    while start < len(widths):
        end = min(start + batch_size, len(widths))
        while equal_widths_only and widths[end - 1] != widths[start]:
            end -= 1
        ends.append(end)
        start = end
    return ends


class Planner:
    """The batch plan of one extraction: ``plan(start)`` gives the batch ends from ``start`` on.

    ``batch_size`` is an int (fixed batches) or "auto" (the cost model, with limits that suit
    ``on_gpu``); ``back_off()`` halves the limits after an out-of-memory error and says
    whether that was possible.
    """

    def __init__(self, widths, batch_size, *, on_gpu: bool, equal_widths_only: bool):
        self.widths = list(widths)
        self.auto = batch_size == "auto"
        self.equal_widths_only = equal_widths_only
        if self.auto:
            # CPU: up to ~2k tokens per batch keeps activations cache-friendly (measured on
            # smollm2), and each forward pass costs about as much as ~32 more tokens, which the
            # plan trades against padding. GPUs want big batches and back off on OOM.
            self.max_batch, self.token_budget = (256, 131072) if on_gpu else (32, 2048)
            self.overhead_tokens = 4096.0 if on_gpu else 32.0
        else:
            self.max_batch, self.token_budget, self.overhead_tokens = int(batch_size), None, None

    def plan(self, start: int) -> list:
        """Ends (absolute row positions) of the batches covering ``start .. n``."""
        widths = self.widths[start:]
        if self.auto:
            ends = plan_batches(widths, self.max_batch, self.token_budget, self.overhead_tokens,
                                self.equal_widths_only)
        else:
            ends = fixed_batches(widths, self.max_batch, self.equal_widths_only)
        return [start + end for end in ends]

    def limits(self) -> tuple:
        """``(max_batch, token_budget)`` now (token_budget 0: none); ``set_limits`` restores them."""
        return self.max_batch, self.token_budget or 0

    def set_limits(self, max_batch: int, token_budget: int) -> None:
        self.max_batch, self.token_budget = int(max_batch), (int(token_budget) or None)

    def back_off(self, failed_rows: int) -> bool:
        """Halve the limits after a batch of ``failed_rows`` ran out of memory; False if impossible."""
        if not self.auto or self.max_batch == 1:
            return False
        self.max_batch = max(1, min(self.max_batch, failed_rows) // 2)
        self.token_budget = max(1, self.token_budget // 2) if self.token_budget else None
        return True
