"""Forward hooks that pool each needed hidden state of a batch as the model computes it.

Hidden state 0 is the input of the first block (a pre-hook), state ``i`` the output of block
``i``, and state ``L`` the stack's output where the family applies a final norm there. Each
hook hands its ``(B, T, d)`` tensor to the batch's ``BatchPooler`` and, after the last layer
needed, raises ``StopForward`` so the rest of the model never runs.
"""

from __future__ import annotations

import torch

from ._pooling import BatchPooler


class StopForward(Exception):
    """Raised inside a hook once the last needed layer is pooled (not a RuntimeError)."""


def first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise RuntimeError(f"cannot find the hidden states in a block output of type {type(output).__name__}")


class HookSet:
    """Forward hooks writing each needed hidden state into the current batch's pooler."""

    def __init__(self, parts, layer_list):
        self.parts = parts
        self.slot_of = {layer: slot for slot, layer in enumerate(layer_list)}
        self.last_needed = max(layer_list)
        self.pooler: BatchPooler | None = None
        self.calls = [0] * len(layer_list)
        self.handles = []

    def _record(self, layer: int, hidden: torch.Tensor):
        slot = self.slot_of[layer]
        self.calls[slot] += 1
        self.pooler.write(slot, hidden)
        if layer == self.last_needed:
            raise StopForward

    def install(self):
        parts, L = self.parts, self.parts.num_layers
        if 0 in self.slot_of:

            def first_input(module, args, kwargs):
                hidden = args[0] if args else kwargs.get("hidden_states")
                if not isinstance(hidden, torch.Tensor):
                    hidden = next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
                self._record(0, hidden)

            self.handles.append(parts.blocks[0].register_forward_pre_hook(first_input, with_kwargs=True))
        for block_index, block in enumerate(parts.blocks):
            layer = block_index + 1
            if layer not in self.slot_of or (layer == L and parts.last_from_stack):
                continue
            self.handles.append(
                block.register_forward_hook(lambda m, a, out, layer=layer: self._record(layer, first_tensor(out)))
            )
        if L in self.slot_of and parts.last_from_stack:
            self.handles.append(
                parts.stack.register_forward_hook(lambda m, a, out: self._record(L, first_tensor(out)))
            )

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def start_batch(self, pooler: BatchPooler):
        self.pooler = pooler
        self.calls = [0] * len(self.calls)

    def check_batch(self, model_name: str):
        if any(count != 1 for count in self.calls):
            raise RuntimeError(
                f"extraction hooks of {model_name} fired {self.calls} times per layer for one batch "
                "(expected once each); this architecture reuses or skips blocks and is not supported"
            )
