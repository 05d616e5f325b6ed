"""The one key map between HF/PyTorch Dream-VL tensors and dreamjax params, used by both directions.

Each row: HF name pattern (Dream-VL layout, spec §1.9) ↔ dreamjax param path, plus a per-key transform.
``{i}`` stands for a vision block / decoder layer index; with ``scan_layers`` those params are stacked
on a leading ``layers`` axis under ``blocks`` / ``layers`` instead of ``blocks_{i}`` / ``layers_{i}``.

HF layouts accepted (detected from the key names, renamed to the canonical one before lookup):

* ``dream``  (Dream-VL-7B / Dream-VLA-7B / Dream-v0 as shipped): ``visual.*``, ``projector.*``, ``model.*``,
  ``lm_head.*``.
* ``hf5``    (transformers 5.x composite naming): ``model.visual.*``, ``model.projector.*``,
  ``model.language_model.*``, ``lm_head.*``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from dreamjax.models.config import DreamVLConfig

# ---------------------------------------------------------------- per-key transforms (pure numpy, exact)


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (array, hf_shape) → HF tensor


IDENTITY = Transform("identity", lambda a: a, lambda a, shape: a)
# torch Linear [out, in] ↔ Flax Dense kernel [in, out]
LINEAR = Transform("linear", lambda a: np.ascontiguousarray(a.T), lambda a, shape: np.ascontiguousarray(a.T))
# Conv3d [O, C, T, H, W] with stride = kernel ↔ Dense kernel [C·T·H·W, O] (rows flattened in C, T, H, W order)
PATCH_EMBED = Transform(
    "patch_embed",
    lambda a: np.ascontiguousarray(a.reshape(a.shape[0], -1).T),
    lambda a, shape: np.ascontiguousarray(a.T).reshape(shape))


@dataclasses.dataclass(frozen=True)
class Row:
    hf: str  # e.g. "model.layers.{i}.self_attn.q_proj.weight"
    path: str  # e.g. "model/layers_{i}/self_attn/q_proj/kernel"
    transform: Transform = IDENTITY
    stack: str | None = None  # "vision" | "llm": indexed by {i}

    def hf_regex(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(\d+)") + "$")


def _linear(hf_prefix: str, path_prefix: str, stack=None, bias=True) -> list[Row]:
    rows = [Row(f"{hf_prefix}.weight", f"{path_prefix}/kernel", LINEAR, stack)]
    if bias:
        rows.append(Row(f"{hf_prefix}.bias", f"{path_prefix}/bias", IDENTITY, stack))
    return rows


def _norm(hf_prefix: str, path_prefix: str, stack=None, bias=True) -> list[Row]:
    rows = [Row(f"{hf_prefix}.weight", f"{path_prefix}/scale", IDENTITY, stack)]
    if bias:
        rows.append(Row(f"{hf_prefix}.bias", f"{path_prefix}/bias", IDENTITY, stack))
    return rows


VISION_ROWS: list[Row] = [
    Row("visual.patch_embed.proj.weight", "visual/patch_embed/kernel", PATCH_EMBED),
    *_norm("visual.blocks.{i}.norm1", "visual/blocks_{i}/norm1", "vision"),
    *_norm("visual.blocks.{i}.norm2", "visual/blocks_{i}/norm2", "vision"),
    *_linear("visual.blocks.{i}.attn.qkv", "visual/blocks_{i}/attn/qkv", "vision"),
    *_linear("visual.blocks.{i}.attn.proj", "visual/blocks_{i}/attn/proj", "vision"),
    *_linear("visual.blocks.{i}.mlp.fc1", "visual/blocks_{i}/mlp/fc1", "vision"),
    *_linear("visual.blocks.{i}.mlp.fc2", "visual/blocks_{i}/mlp/fc2", "vision"),
    *_norm("visual.merger.ln_q", "visual/merger/ln_q"),
    *_linear("visual.merger.mlp.0", "visual/merger/mlp_0"),
    *_linear("visual.merger.mlp.2", "visual/merger/mlp_2"),
]
PROJECTOR_ROWS: list[Row] = [
    *_linear("projector.linear_1", "projector/linear_1"),
    *_linear("projector.linear_2", "projector/linear_2"),
]
LLM_ROWS: list[Row] = [
    Row("model.embed_tokens.weight", "model/embed_tokens/embedding"),
    *_linear("model.layers.{i}.self_attn.q_proj", "model/layers_{i}/self_attn/q_proj", "llm"),
    *_linear("model.layers.{i}.self_attn.k_proj", "model/layers_{i}/self_attn/k_proj", "llm"),
    *_linear("model.layers.{i}.self_attn.v_proj", "model/layers_{i}/self_attn/v_proj", "llm"),
    *_linear("model.layers.{i}.self_attn.o_proj", "model/layers_{i}/self_attn/o_proj", "llm", bias=False),
    *_linear("model.layers.{i}.mlp.gate_proj", "model/layers_{i}/mlp/gate_proj", "llm", bias=False),
    *_linear("model.layers.{i}.mlp.up_proj", "model/layers_{i}/mlp/up_proj", "llm", bias=False),
    *_linear("model.layers.{i}.mlp.down_proj", "model/layers_{i}/mlp/down_proj", "llm", bias=False),
    *_norm("model.layers.{i}.input_layernorm", "model/layers_{i}/input_layernorm", "llm", bias=False),
    *_norm("model.layers.{i}.post_attention_layernorm", "model/layers_{i}/post_attention_layernorm", "llm",
           bias=False),
    *_norm("model.norm", "model/norm", bias=False),
]
LM_HEAD_ROWS: list[Row] = [*_linear("lm_head", "lm_head", bias=False)]


def rows_for(config: DreamVLConfig) -> list[Row]:
    """The table rows that exist for this architecture."""
    rows = list(LLM_ROWS)
    if config.vision is not None:
        rows = VISION_ROWS + (PROJECTOR_ROWS if config.use_projector else []) + rows
    if not config.tie_word_embeddings:
        rows += LM_HEAD_ROWS
    return rows


def _num_layers(row: Row, config: DreamVLConfig) -> int:
    return config.vision.depth if row.stack == "vision" else config.num_hidden_layers


def _scanned(path: str) -> str:
    return path.replace("blocks_{i}", "blocks").replace("layers_{i}", "layers")


# ---------------------------------------------------------------- HF layouts

LAYOUT_PREFIXES = {  # canonical (dream) prefix → hf5 prefix
    "visual.": "model.visual.",
    "projector.": "model.projector.",
    "model.": "model.language_model.",
}


def detect_layout(keys: Iterable[str]) -> str:
    keys = list(keys)
    if any(k.startswith(("model.language_model.", "model.visual.")) for k in keys):
        return "hf5"
    return "dream"


def to_canonical(key: str, layout: str) -> str:
    if layout == "hf5":
        for canon, hf5 in LAYOUT_PREFIXES.items():
            if key.startswith(hf5):
                return canon + key[len(hf5):]
    return key


def from_canonical(key: str, layout: str) -> str:
    if layout == "hf5":
        for canon, hf5 in LAYOUT_PREFIXES.items():
            if key.startswith(canon):
                return hf5 + key[len(canon):]
    return key


# ---------------------------------------------------------------- lookups


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one HF tensor goes: param path (tuple), layer index within a stacked param (or None)."""

    path: tuple[str, ...]
    layer: int | None
    transform: Transform
    stacked: bool


def expected_hf_keys(config: DreamVLConfig, layout: str = "dream") -> list[str]:
    """Every HF tensor name the architecture has, in table order."""
    out = []
    for row in rows_for(config):
        if row.stack:
            out += [from_canonical(row.hf.replace("{i}", str(i)), layout) for i in range(_num_layers(row, config))]
        else:
            out.append(from_canonical(row.hf, layout))
    return out


def hf_to_target(key: str, config: DreamVLConfig, layout: str = "dream") -> Target | None:
    """Map one HF tensor name to its dreamjax param (None if the architecture has no such tensor)."""
    canon = to_canonical(key, layout)
    for row in rows_for(config):
        m = row.hf_regex().match(canon)
        if not m:
            continue
        if row.stack is None:
            return Target(tuple(row.path.split("/")), None, row.transform, False)
        i = int(m.group(1))
        if i >= _num_layers(row, config):
            return None
        if config.scan_layers:
            return Target(tuple(_scanned(row.path).split("/")), i, row.transform, True)
        return Target(tuple(row.path.replace("{i}", str(i)).split("/")), None, row.transform, False)
    return None


def params_to_hf(params: Mapping, config: DreamVLConfig, hf_shapes: Mapping[str, tuple[int, ...]] | None = None,
                 layout: str = "dream") -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, tensor) for every param, one at a time (unstacking scanned layers).

    ``hf_shapes`` gives the HF shape where a transform needs it (the patch-embed Conv3d); when absent it is
    derived from the config.
    """
    for row in rows_for(config):
        indices = range(_num_layers(row, config)) if row.stack else [None]
        for i in indices:
            hf_key = row.hf if i is None else row.hf.replace("{i}", str(i))
            if row.stack and config.scan_layers:
                arr = np.asarray(_get(params, _scanned(row.path).split("/")))[i]
            else:
                arr = np.asarray(_get(params, (row.path if i is None else row.path.replace("{i}", str(i))).split("/")))
            shape = (hf_shapes or {}).get(hf_key) or hf_shape(row, arr.shape, config)
            yield from_canonical(hf_key, layout), row.transform.to_hf(arr, shape)


def hf_shape(row: Row, jax_shape: tuple[int, ...], config: DreamVLConfig) -> tuple[int, ...]:
    """The HF tensor shape of one (per-layer) dreamjax param shape under ``row``'s transform."""
    if row.transform is PATCH_EMBED:
        v = config.vision
        return (v.embed_dim, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return tuple(reversed(jax_shape)) if row.transform is LINEAR else tuple(jax_shape)


def _get(tree: Mapping, path: Iterable[str]):
    node = tree
    walked = []
    for p in path:
        walked.append(p)
        if p not in node:
            raise KeyError(f"param {'/'.join(walked)} missing from the dreamjax params")
        node = node[p]
    return node


def hf_to_params(tensors: Mapping[str, np.ndarray] | Callable[[str], np.ndarray], keys: Iterable[str],
                 config: DreamVLConfig, *, source: str = "checkpoint") -> dict:
    """Build the dreamjax param tree (numpy) from HF tensors, checking the key set exactly.

    ``tensors`` is a mapping or a ``key → array`` callable (lets callers read lazily, one tensor at a time).
    Missing or unexpected keys and shape mismatches raise ``ValueError`` naming the keys and ``source``.
    """
    keys = list(keys)
    get = tensors if callable(tensors) else tensors.__getitem__
    layout = detect_layout(keys)
    expected = expected_hf_keys(config, layout)
    missing = sorted(set(expected) - set(keys))
    unexpected = sorted(set(keys) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: tensor names do not match the config's architecture "
                         f"(layout {layout!r}); missing {_brief(missing)}; unexpected {_brief(unexpected)}")
    params: dict = {}
    stacks: dict[tuple[str, ...], list] = {}
    for key in expected:
        target = hf_to_target(key, config, layout)
        arr = target.transform.to_jax(np.asarray(get(key)))
        if target.stacked:
            stacks.setdefault(target.path, [None] * _stack_len(target.path, config))[target.layer] = arr
        else:
            _set(params, target.path, arr)
    for path, arrs in stacks.items():
        _set(params, path, np.stack(arrs))
    return params


def _stack_len(path: tuple[str, ...], config: DreamVLConfig) -> int:
    return config.vision.depth if path[0] == "visual" else config.num_hidden_layers


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _brief(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
