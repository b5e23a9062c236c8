"""Texts to token rows, and token rows to the padded tensors of one forward pass.

``tokenize`` runs the tokenizer once over all texts (again only for those it must cut),
keeping ``input_ids`` and every other per-token output whose name the model's forward takes
(``token_type_ids`` for a BERT-style tokenizer, say), so extraction feeds the model what
``model(**tokenizer(text))`` would. ``batch_inputs`` right-pads a batch of rows: pads of
``input_ids`` and of every extra input sit after the real tokens and the attention mask
hides them, so their values never reach a real position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral

import torch

from ._blocks import max_positions_of

# Tokenizers report "no limit" as a huge model_max_length; ignore values above this.
_HUGE_LENGTH = 10**7
# Outputs that extraction builds or reads itself, never forwarded as they come.
_OWN_OUTPUTS = ("input_ids", "attention_mask", "special_tokens_mask")


@dataclass
class Encoded:
    """Token rows of every text (truncated), plus what pooling and padding need."""

    ids: list  # list of lists of int, truncated
    truncated: list  # list of bool
    skip_first: list  # list of bool: position 0 is a tokenizer-inserted BOS/CLS
    max_length: int | None
    extra: dict = field(default_factory=dict)  # forward-argument name -> list of per-token int lists
    extra_pad: dict = field(default_factory=dict)  # forward-argument name -> pad value


def effective_max_length(model, tokenizer, max_length):
    """The tighter of ``max_length``, the model's context and the tokenizer's limit (None: none)."""
    limits = [value for value in (max_positions_of(model), max_length) if value is not None]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _HUGE_LENGTH:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def _extra_pad_value(tokenizer, name: str) -> int:
    if name == "token_type_ids":
        value = getattr(tokenizer, "pad_token_type_id", 0)
        return value if isinstance(value, int) else 0
    return 0


def tokenize(texts, tokenizer, max_len, chat_template: bool, forward_names=frozenset()) -> Encoded:
    """Tokenise ``texts``; keep the tokenizer outputs named in ``forward_names`` (per token, int)."""
    add_special = True
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            for text in texts
        ]
        add_special = False  # the template already holds BOS etc.
    kwargs = {"add_special_tokens": add_special, "return_attention_mask": False, "verbose": False}
    encoded = tokenizer(texts, return_special_tokens_mask=True, **kwargs)
    ids = [list(row) for row in encoded["input_ids"]]
    special = encoded.get("special_tokens_mask")
    names = sorted(name for name in encoded if name in forward_names and name not in _OWN_OUTPUTS)
    extra = {name: [list(row) for row in encoded[name]] for name in names}
    truncated = [False] * len(ids)
    if max_len is not None:
        long_rows = [i for i, row in enumerate(ids) if len(row) > max_len]
        if long_rows:
            again = tokenizer(
                [texts[i] for i in long_rows],
                truncation=True,
                max_length=max_len,
                return_special_tokens_mask=True,
                **kwargs,
            )
            for position, i in enumerate(long_rows):
                ids[i] = list(again["input_ids"][position])
                if special is not None:
                    special[i] = again["special_tokens_mask"][position]
                for name in names:
                    extra[name][i] = list(again[name][position])
                truncated[i] = True
    zero = [i for i, row in enumerate(ids) if len(row) == 0]
    if zero:
        raise ValueError(f"texts at indices {zero[:20]} produce no tokens with this tokenizer")
    for name, rows in extra.items():
        bad = [i for i, row in enumerate(rows)
               if len(row) != len(ids[i]) or not all(isinstance(v, Integral) for v in row)]
        if bad:
            raise ValueError(
                f"the tokenizer's output {name!r} (an argument of the model's forward) must hold one int per "
                f"token like input_ids, but does not for texts at indices {bad[:20]}"
            )
    bos = getattr(tokenizer, "bos_token_id", None)
    skip_first = []
    for i, row in enumerate(ids):
        inserted = special is not None and len(special[i]) > 0 and bool(special[i][0])
        skip_first.append(bool(inserted or (bos is not None and row[0] == bos)))
    return Encoded(ids=ids, truncated=truncated, skip_first=skip_first, max_length=max_len, extra=extra,
                   extra_pad={name: _extra_pad_value(tokenizer, name) for name in names})


def check_token_ids(encoded: Encoded, rows_limit: int | None, vocabulary: int | None) -> None:
    """ValueError unless every token id fits the model's input embedding of ``rows_limit`` rows."""
    if rows_limit is None:
        return
    if vocabulary is not None and vocabulary > rows_limit:
        raise ValueError(
            f"the tokenizer has {vocabulary} tokens but the model's input embedding has only {rows_limit} "
            "rows: tokenizer and model do not match"
        )
    largest = max(max(row) for row in encoded.ids)
    smallest = min(min(row) for row in encoded.ids)
    if largest >= rows_limit or smallest < 0:
        raise ValueError(
            f"the tokenizer produced token id {largest if largest >= rows_limit else smallest} but the "
            f"model's input embedding has {rows_limit} rows: tokenizer and model do not match"
        )


def batch_inputs(encoded: Encoded, batch_rows, pad_id: int, device, pass_mask: bool) -> tuple[dict, torch.Tensor]:
    """Right-padded forward arguments of ``batch_rows`` on ``device``, and their token counts (CPU int64)."""
    counts = torch.tensor([len(encoded.ids[i]) for i in batch_rows], dtype=torch.long)
    width = int(counts.max())
    inputs = {}
    for name, rows, pad in [("input_ids", encoded.ids, pad_id)] + [
        (name, encoded.extra[name], encoded.extra_pad[name]) for name in encoded.extra
    ]:
        tensor = torch.full((len(batch_rows), width), pad, dtype=torch.long)
        for b, i in enumerate(batch_rows):
            tensor[b, : counts[b]] = torch.tensor(rows[i], dtype=torch.long)
        inputs[name] = tensor.to(device)
    if pass_mask:
        mask = (torch.arange(width)[None, :] < counts[:, None]).to(torch.long)
        inputs["attention_mask"] = mask.to(device)
    return inputs, counts
