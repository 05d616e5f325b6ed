"""The Dream-VL SFT maskable set and labels (spec §4), built on the host in numpy.

Data code builds these per batch (``dreamjax.data.sft``); the objective (``dreamjax.diffusion.objective``)
only consumes the resulting ``labels``: every position with a label ≠ ``IGNORE_INDEX`` is maskable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = -100  # as the reference's labels (and ``objective.IGNORE_INDEX``)


def assistant_turn_mask(input_ids: np.ndarray, *, im_start_id: int, im_end_id: int, newline_id: int,
                        assistant_role_ids: Sequence[int]) -> np.ndarray:
    """[B, S] bool: the tokens of every assistant turn, header to trailer (host side, numpy).

    A turn starts at ``<|im_start|>`` followed by ``assistant_role_ids`` (the tokens of "assistant", then
    the newline, as the tokenizer writes them) and ends at the next ``<|im_end|>`` plus the newline right
    after it. An unterminated turn (truncated sample) runs to the end of the row.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    role = list(assistant_role_ids)
    out = np.zeros(ids.shape, bool)
    for b, row in enumerate(ids.tolist()):
        k, n = 0, len(row)
        while k < n:
            if row[k] == im_start_id and row[k + 1:k + 1 + len(role)] == role:
                end = k + 1 + len(role)
                while end < n and row[end] != im_end_id:
                    end += 1
                end = min(end + 1, n)  # include <|im_end|>
                if end < n and row[end] == newline_id:
                    end += 1
                out[b, k:end] = True
                k = end
            else:
                k += 1
    return out


def sft_labels(input_ids: np.ndarray, assistant_mask: np.ndarray, lengths: Sequence[int] | np.ndarray, *,
               structural_ids: Sequence[int], pad_token_id: int, never_maskable_ids: Sequence[int] = (),
               num_eos_targets: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The maskable set of Dream-VL SFT data (spec §4, LLaVA ``preprocess_qwen`` + Dream collator), numpy.

    input_ids [B, S]: rendered conversations (row b's tokens in ``[0, lengths[b])``, anything after).
    assistant_mask [B, S]: :func:`assistant_turn_mask`. Maskable (label = the token) are

    * every token of an assistant turn, its ``<|im_start|>assistant\\n`` header and ``<|im_end|>\\n`` included;
    * anywhere else, the structural tokens ``structural_ids`` (``\\n`` 198, ``<|im_start|>``, ``<|im_end|>``):
      the reference labels every occurrence of these ids on purpose, a lone ``\\n`` inside user text too;
    * the ``num_eos_targets[b]`` positions after the sample: the collator pads labels with ``pad_token_id``
      (= ``<|endoftext|>``) and attends to them, so the model learns to fill the tail of the canvas with EOS.
      Default ``max(lengths) − lengths`` (padding to the longest sample of the batch, as the collator does;
      in the reference the count comes from the pre-splice text lengths, pass it per row to reproduce
      batches whose rows have different image-token counts).

    Everything else is −100: other prompt tokens, ``never_maskable_ids`` (image/video pads), and the
    padding beyond the EOS targets, which is also attention-masked (the reference's post-splice padding).
    Returns ``input_ids`` (padding set to ``pad_token_id``), ``labels`` and ``attention_mask``, all [B, S].
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    b, s = ids.shape
    assistant = np.asarray(assistant_mask, bool)
    if assistant.shape != ids.shape:
        raise ValueError(f"assistant_mask shape {assistant.shape} != input_ids shape {ids.shape}")
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    if lengths.shape != (b,) or (lengths < 0).any() or (lengths > s).any():
        raise ValueError(f"lengths must be {b} values in [0, {s}], got {lengths.tolist()}")
    eos = (lengths.max(initial=0) - lengths) if num_eos_targets is None else np.asarray(num_eos_targets, np.int64)
    if eos.shape != (b,) or (eos < 0).any():
        raise ValueError(f"num_eos_targets must be {b} non-negative values, got {eos.tolist()}")
    pos = np.arange(s)[None]
    in_sample = pos < lengths[:, None]
    eos_pad = (pos >= lengths[:, None]) & (pos < (lengths + eos)[:, None])
    out_ids = np.where(in_sample, ids, pad_token_id).astype(ids.dtype)
    maskable = in_sample & (assistant | np.isin(ids, np.asarray(list(structural_ids))))
    maskable &= ~np.isin(ids, np.asarray(list(never_maskable_ids), ids.dtype))
    labels = np.where(maskable, ids, IGNORE_INDEX)
    labels = np.where(eos_pad, pad_token_id, labels).astype(np.int32)
    attention_mask = (in_sample | eos_pad).astype(np.int32)
    return dict(input_ids=out_ids, labels=labels, attention_mask=attention_mask)
