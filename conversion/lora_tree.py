"""peft LoRA modules ⇄ the dreamjax LoRA tree (``dreamjax.models.lora``), through the one key map.

peft saves, per adapted ``nn.Linear``, ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight``
[out, r] (see ``conversion.lora``). dreamjax keeps adapters in a tree beside the params, keyed by the param
path of the adapted Dense kernel: ``{"params": {…path…: {"kernel": {"a": [in, r], "b": [r, out]}}}}`` (a
leading ``layers`` axis when the layers are scanned) — the layout of the training loop's ``"lora"`` collection.

The module name → kernel path comes from the key-map row of the base weight ``<module>.weight`` (it must be a
Linear row), and each factor goes through that row's transform: ``a = A.T``, ``b = B.T``, so
``W_torch + s·B@A`` is ``W_jax + s·a@b`` transposed. For scanned layers the per-layer factors are stacked like
the kernels; layers the adapter does not cover hold zeros (``a = b = 0``: no update, and no gradient reaches
them), and the list of covered modules is kept beside the tree so that nothing is invented on the way back.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

import numpy as np

from conversion.keymap import LINEAR, _num_layers, hf_to_target, rows_for, to_canonical
from dreamjax.models.config import DreamVLConfig


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one adapted Linear lives in the tree: kernel path (under ``params``), layer in a stack, stack length."""

    module: str  # canonical (Dream layout) module name, e.g. "model.layers.0.self_attn.q_proj"
    path: tuple[str, ...]  # e.g. ("model", "layers", "self_attn", "q_proj", "kernel")
    layer: int | None
    num_layers: int | None


def slot_of(module: str, config: DreamVLConfig, layout: str = "dream", *, where: str = "adapter") -> Slot:
    """The kernel an adapter module adapts, or ``ValueError`` naming the module when it is no Linear layer of
    this architecture (an embedding, the patch-embed Conv3d, a layer index past the config's depth, a module
    the model does not have, ``lm_head`` with tied embeddings)."""
    canon = to_canonical(module, layout)
    target = hf_to_target(canon + ".weight", config, "dream")
    if target is None or target.transform is not LINEAR:
        what = "is not a Linear layer" if target is not None else "has no weight"
        raise ValueError(f"{where}: adapter module {module!r} {what} in this architecture ('{canon}.weight' maps "
                         "to no Dense kernel in the key map); LoRA can be kept only on Linear layers "
                         "(q/k/v/o/gate/up/down, ViT qkv/proj/fc1/fc2, merger, projector, lm_head)")
    n = None
    if target.stacked:
        row = next(r for r in rows_for(config) if r.stack and r.hf_regex().match(canon + ".weight"))
        n = _num_layers(row, config)
    return Slot(canon, target.path, target.layer, n)


def modules_to_tree(modules: Mapping[str, tuple[np.ndarray, np.ndarray]], config: DreamVLConfig, layout: str, *,
                    kernel_shape: Callable[[tuple[str, ...]], tuple[int, ...]] | None = None, dtype=None,
                    where: str = "adapter") -> dict:
    """``{module: (A [r, in], B [out, r])}`` → ``{"params": tree}`` of ``{"a", "b"}`` numpy leaves.

    ``kernel_shape(path)`` (the model's kernel shape, stacked when scanned) lets the factors be checked against
    the kernels; ``dtype`` converts (default: as stored; every tensor must then share one dtype, since
    stacked layers share one array).
    """
    if dtype is None:
        dtypes = sorted({str(t.dtype) for ab in modules.values() for t in ab})
        if len(dtypes) > 1:
            raise ValueError(f"{where}: adapter tensors mix dtypes {dtypes}; kept LoRA params need one dtype "
                             "(pass --dtype to convert them)")
    tree: dict = {}
    stacks: dict[tuple[str, ...], dict] = {}
    for module, (A, B) in modules.items():
        slot = slot_of(module, config, layout, where=where)
        a, b = LINEAR.to_jax(A), LINEAR.to_jax(B)
        if dtype is not None:
            a, b = a.astype(dtype), b.astype(dtype)
        if kernel_shape is not None:
            shape = tuple(kernel_shape(slot.path))
            per_layer = shape[1:] if slot.layer is not None else shape
            if (a.shape[0], b.shape[1]) != tuple(per_layer):
                raise ValueError(f"{where}: adapter module {module!r}: lora_A {list(A.shape)} / lora_B {list(B.shape)} "
                                 f"adapt a [{b.shape[1]}, {a.shape[0]}] Linear, but the model's weight is "
                                 f"{list(reversed(per_layer))}")
        if slot.layer is None:
            _set(tree, slot.path, {"a": a, "b": b})
            continue
        stack = stacks.setdefault(slot.path, {"n": slot.num_layers, "a": {}, "b": {}})
        stack["a"][slot.layer], stack["b"][slot.layer] = a, b
    for path, stack in stacks.items():
        node = {}
        for k in ("a", "b"):
            some = next(iter(stack[k].values()))
            full = np.zeros((stack["n"],) + some.shape, some.dtype)
            for i, arr in stack[k].items():
                full[i] = arr
            node[k] = full
        _set(tree, path, node)
    return {"params": tree}


def tree_to_modules(tree: Mapping, config: DreamVLConfig, modules: Iterable[str], layout: str = "dream", *,
                    where: str = "LoRA tree") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The inverse: ``{module: (A [r, in], B [out, r])}`` for the named modules (names in ``layout``)."""
    out = {}
    for module in modules:
        slot = slot_of(module, config, layout, where=where)
        node = tree["params"]
        for p in slot.path:
            if p not in node:
                raise KeyError(f"{where}: no adapter at params/{'/'.join(slot.path)} (module {module!r})")
            node = node[p]
        a, b = np.asarray(node["a"]), np.asarray(node["b"])
        if slot.layer is not None:
            a, b = a[slot.layer], b[slot.layer]
        out[module] = (LINEAR.to_hf(a, None), LINEAR.to_hf(b, None))
    return out


def tree_get(tree: Mapping, path: Iterable[str]):
    """The node at ``path`` or None."""
    node = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value
