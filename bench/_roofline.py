"""Extraction against the machine's own GEMM peak: block FLOPs of the real tokens, padding, the peak itself.

``block_flops`` counts the matrix products of the transformer blocks from the model config for
each prompt's real (non-padding) tokens: the Q/K/V and output projections, the MLP (three
matrices when gated, two otherwise) and causal attention (QK^T and PV over the t(t+1)/2 pairs
a causal model needs). Embeddings, norms, element-wise ops and logits are left out (extract
computes no logits), so the achieved rate is a lower bound on what the blocks did.
``gemm_peak`` times ``torch.matmul`` of the same shapes the blocks multiply (tokens x hidden
by hidden x out) at the same thread count, the best of a few repeats.
"""

from __future__ import annotations

import time

import torch


def _cfg(config):
    text = getattr(config, "text_config", None) or config
    d = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or d // heads)
    kv = int(getattr(text, "num_key_value_heads", None) or heads)
    ff = int(text.intermediate_size)
    act = str(getattr(text, "hidden_act", None) or getattr(text, "hidden_activation", "") or "")
    gated = getattr(text, "model_type", "") in ("llama", "gemma", "gemma2", "gemma3", "gemma3_text", "mistral",
                                                 "qwen2", "qwen3", "phi3") or "gelu_pytorch_tanh" in act
    return d, heads * head_dim, kv * head_dim, ff, gated, int(text.num_hidden_layers)


def block_flops(config, token_counts) -> float:
    """FLOPs of all blocks for prompts of ``token_counts`` real tokens (see the module docstring)."""
    d, q, kv, ff, gated, layers = _cfg(config)
    per_token = 2 * d * (q + 2 * kv) + 2 * q * d + (3 if gated else 2) * 2 * d * ff
    total = 0.0
    for t in token_counts:
        t = int(t)
        total += per_token * t + 2 * 2 * q * t * (t + 1) / 2
    return total * layers


def gemm_shapes(config, tokens: int):
    """(M, K, N) of the block products for a batch of ``tokens`` rows."""
    d, q, kv, ff, _, _ = _cfg(config)
    return [(tokens, d, q + 2 * kv), (tokens, q, d), (tokens, d, ff), (tokens, ff, d)]


def gemm_peak(shapes, dtype=torch.float32, repeats: int = 5) -> tuple[float, float]:
    """(GFLOP/s, GFLOP per process CPU-second) of torch.matmul over ``shapes``, best of ``repeats`` each.

    The CPU-second rate is what a shared machine still shows faithfully: wall time there
    depends on how much of the cores the other jobs leave.
    """
    flops = seconds = cpu_seconds = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k).to(dtype)
        b = torch.randn(k, n).to(dtype)
        torch.matmul(a, b)
        best = best_cpu = float("inf")
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        flops += 2.0 * m * k * n
        seconds += best
        cpu_seconds += best_cpu
    return flops / seconds / 1e9, flops / max(cpu_seconds, 1e-9) / 1e9


class TokenCounter:
    """Counts the (batch x padded length) rows that reach the first block: real plus padding tokens."""

    def __init__(self, first_block):
        self.rows = 0
        self.passes = 0
        self._handle = first_block.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        self.rows += int(hidden.shape[0] * hidden.shape[1])
        self.passes += 1

    def remove(self):
        self._handle.remove()
