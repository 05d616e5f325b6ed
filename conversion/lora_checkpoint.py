"""peft LoRA adapters kept as LoRA params in a dreamjax checkpoint (``dreamjax convert --keep-lora``), and back.

A checkpoint converted with ``--keep-lora ADAPTER_DIR`` holds the base weights unmerged in ``params/`` and,
beside them::

    lora/                          orbax PyTree {"params": {…kernel path…: {"a": [in, r], "b": [r, out]}}}: the
                                   layout of the training loop's "lora" collection (conversion.lora_tree)
    assets/lora.json               r, lora_alpha, scaling, the adapter's key layout, the modules it adapts and
                                   its weights file as stored (tensor order, safetensors __metadata__)
    assets/lora_adapter_config.json   adapter_config.json, byte for byte

Readers: ``dreamjax export`` merges the adapters into the weights it writes (peft's arithmetic, byte-identical
to ``--merge-lora`` on import) or, with ``--lora-adapter-out``, writes the base unmerged plus a peft adapter
dir that is byte-identical to the one converted; ``dreamjax train`` with ``train.init_from`` pointing here
continues the adapters (:func:`init_from_kept_lora`).

Refused when keeping (each named): ``use_rslora`` (scaling α/√r; dreamjax LoRA is α/r — merge it instead),
adapters on modules that are no Linear of the architecture, factors that do not fit the kernels, mixed
dtypes; and, in ``conversion.lora.load_adapter`` for both paths, DoRA, ``modules_to_save``, ``bias`` other
than "none", rank/alpha patterns. At ``init_from``: a rank or alpha different from ``train.lora``, and
adapters on kernels that ``train.lora.include/exclude`` do not adapt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from conversion.keymap import LINEAR, detect_layout, to_canonical
from conversion.lora import KEY, LoraAdapter, merge_weight
from conversion.lora_tree import modules_to_tree, slot_of, tree_get, tree_to_modules
from conversion.safetensors_io import save_file
from dreamjax import checkpoint
from dreamjax.models.config import DreamVLConfig

log = logging.getLogger(__name__)

LORA_DIR = "lora"
LORA_INFO = "lora.json"
ADAPTER_CONFIG_ASSET = "lora_adapter_config.json"
LORA_ASSETS = (LORA_INFO, ADAPTER_CONFIG_ASSET)
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


# ------------------------------------------------------------------------------------------ convert side
def keep_adapter(adapter: LoraAdapter, config: DreamVLConfig, *,
                 kernel_shape: Callable[[tuple[str, ...]], tuple[int, ...]] | None = None,
                 dtype: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """(the LoRA tree, the assets describing it) of ``adapter`` for a model of ``config``; refuses what cannot
    be kept (module docstring), naming the file and the module or field."""
    where = str(adapter.path)
    if adapter.use_rslora:
        raise ValueError(f"{adapter.path}/adapter_config.json: use_rslora=true (scaling lora_alpha/√r) cannot be "
                         "kept as dreamjax LoRA params, whose scaling is alpha/r; use --merge-lora instead")
    layout = detect_layout(adapter.modules)
    tree = modules_to_tree(adapter.modules, config, layout, kernel_shape=kernel_shape, dtype=dtype, where=where)
    info = {"format": "peft-lora", "r": adapter.r, "lora_alpha": adapter.lora_alpha, "scaling": adapter.scaling,
            "layout": layout, "modules": sorted(adapter.modules), "weights_file": adapter.weights_file,
            "tensor_names": list(adapter.tensor_names), "file_metadata": adapter.file_metadata}
    return tree, {LORA_INFO: json.dumps(info, indent=2).encode(), ADAPTER_CONFIG_ASSET: adapter.config_bytes}


def write_lora_item(writer: checkpoint.ParamsWriter, tree: Mapping) -> None:
    """Store the LoRA tree beside the params of a checkpoint being written (like ``ParamsWriter.write_heads``)."""
    import orbax.checkpoint.experimental.v1 as ocp

    ocp.save(writer.tmp / LORA_DIR, dict(tree))


# ------------------------------------------------------------------------------------------ reading
class KeptLora:
    """The kept adapters of a checkpoint: ``info`` (assets/lora.json), ``tree`` (numpy), the stored model config."""

    def __init__(self, path: str | os.PathLike):
        import orbax.checkpoint.experimental.v1 as ocp

        self.ckpt = checkpoint.resolve(path)
        info_file = self.ckpt / checkpoint.ASSETS_DIR / LORA_INFO
        if not info_file.is_file():
            raise FileNotFoundError(f"{self.ckpt}: has {LORA_DIR}/ but no {checkpoint.ASSETS_DIR}/{LORA_INFO}")
        self.info = json.loads(info_file.read_text())
        self.r, self.lora_alpha = int(self.info["r"]), float(self.info["lora_alpha"])
        self.scaling = self.lora_alpha / self.r
        self.tree = jax.device_get(ocp.load(self.ckpt / LORA_DIR))
        self.config = DreamVLConfig.from_hf_dict(checkpoint.load_config(self.ckpt),
                                                 scan_layers=checkpoint.stored_scanned(self.ckpt))

    def modules(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{module name as stored: (A [r, in], B [out, r])}``."""
        return tree_to_modules(self.tree, self.config, self.info["modules"], self.info["layout"],
                               where=str(self.ckpt / LORA_DIR))

    def canonical_modules(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The same keyed by canonical (Dream layout) module name."""
        return {to_canonical(m, self.info["layout"]): ab for m, ab in self.modules().items()}


def has_kept_lora(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a dreamjax checkpoint holding kept LoRA adapters (False for HF snapshot dirs)."""
    try:
        return (checkpoint.resolve(path) / LORA_DIR).is_dir()
    except FileNotFoundError:
        return False


def merged_hf_weight(weight: np.ndarray, module: str, modules: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     scaling: float) -> np.ndarray:
    """An HF Linear weight with its adapter merged exactly as ``--merge-lora`` merges on import (same inputs,
    same arithmetic: byte-identical results)."""
    a, b = modules[module]
    return merge_weight(weight, a, b, scaling)


def write_adapter_dir(kept: KeptLora, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the kept adapters as a peft adapter dir (``adapter_config.json`` as stored +
    ``adapter_model.safetensors`` with the stored tensor names, order, metadata and dtype), atomically.

    A safetensors adapter converted unchanged comes back byte-identical; one stored as ``adapter_model.bin`` comes
    back as safetensors (peft's default format) with the same tensors."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    modules = kept.modules()
    tensors = {}
    for name in kept.info["tensor_names"]:
        m = KEY.match(name)
        if m is None or m["module"] not in modules:
            raise ValueError(f"{kept.ckpt}/{checkpoint.ASSETS_DIR}/{LORA_INFO}: tensor {name!r} is not one of the "
                             "kept adapter modules")
        a, b = modules[m["module"]]
        tensors[name] = a if m["which"] == "A" else b
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / ADAPTER_CONFIG).write_bytes((kept.ckpt / checkpoint.ASSETS_DIR / ADAPTER_CONFIG_ASSET).read_bytes())
        save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata=kept.info.get("file_metadata") or {"format": "pt"})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("peft adapter (%d modules, r %d, alpha %g) → %s", len(modules), kept.r, kept.lora_alpha, out)
    return out


# ------------------------------------------------------------------------------------------ training side
def init_from_kept_lora(path: str | os.PathLike, variables: Mapping[str, Any], run_lora, config: DreamVLConfig
                        ) -> dict:
    """``variables`` (a run's ``{"params": …[, "lora": …]}``, jax arrays in their shardings, base already loaded
    from ``path``) with the adapters kept in ``path`` applied; unchanged when ``path`` keeps none.

    ``run_lora`` (a ``dreamjax.models.lora.LoraConfig``, None when ``train.lora.rank`` is 0): with LoRA the
    kept factors replace the run's fresh ones (kernels or layers the checkpoint does not adapt keep their
    fresh init, b = 0); r and alpha must equal ``train.lora.rank`` / ``train.lora.alpha``. Without LoRA the
    adapters are merged into the base kernels (``W + α/r·a@b`` in fp32, rounded once), so training starts from
    the model the checkpoint represents.
    """
    if not has_kept_lora(path):
        return dict(variables)
    kept = KeptLora(path)
    source = f"{kept.ckpt}/{checkpoint.ASSETS_DIR}/{LORA_INFO}"
    modules = kept.canonical_modules()
    slots = {m: slot_of(m, config, where=str(kept.ckpt)) for m in modules}  # in the run's layout (scanned or not)
    if run_lora is None:
        params = variables["params"]
        for module, (A, B) in modules.items():
            slot = slots[module]
            kernel = tree_get(params, slot.path)
            if kernel is None:
                raise ValueError(f"{kept.ckpt}: the kept adapter of {module!r} adapts params/{'/'.join(slot.path)}, "
                                 "which the run's params do not have")
            params = _replace(params, slot.path, _merged_kernel(kernel, LINEAR.to_jax(A), LINEAR.to_jax(B),
                                                                kept.scaling, slot.layer))
        log.info("merged the %d LoRA adapters kept in %s into the base weights (no LoRA params to continue)",
                 len(modules), kept.ckpt)
        return {**variables, "params": params}
    for field, run, stored, name in (("rank", run_lora.rank, kept.r, "r"),
                                     ("alpha", run_lora.alpha, kept.lora_alpha, "lora_alpha")):
        if float(run) != float(stored):
            raise ValueError(f"train.lora.{field}={run:g} but the LoRA adapters kept in {kept.ckpt} have "
                             f"{name}={stored:g} ({source}); set train.lora.{field}={stored:g} to continue them")
    adapters = variables.get("lora")
    for module, (A, B) in modules.items():
        slot = slots[module]
        node = tree_get(adapters, ("params",) + slot.path)
        if node is None:
            raise ValueError(f"{kept.ckpt}: the kept adapter of {module!r} (params/{'/'.join(slot.path)}) is on a "
                             f"kernel this run does not adapt (train.lora.include={list(run_lora.include)}, "
                             f"exclude={list(run_lora.exclude)})")
        new = {k: _placed(node[k], LINEAR.to_jax(v), slot.layer, f"{module} lora_{k.upper()}")
               for k, v in (("a", A), ("b", B))}
        adapters = _replace(adapters, ("params",) + slot.path, new)
    log.info("continuing the %d LoRA adapters kept in %s (r %d, alpha %g)", len(modules), kept.ckpt, kept.r,
             kept.lora_alpha)
    return {**variables, "lora": adapters}


def merge_kept_lora(path: str | os.PathLike, variables: Mapping[str, Any], config: DreamVLConfig) -> dict:
    """``{"params": …}`` of a model loaded from ``path`` with the adapters ``path`` keeps merged in (unchanged when
    it keeps none): what a loader of model checkpoints (``DreamVL.from_pretrained``) needs to give the adapted
    model rather than the bare base."""
    return init_from_kept_lora(path, variables, None, config)


def _placed(current: jax.Array, value: np.ndarray, layer: int | None, what: str) -> jax.Array:
    """``value`` in ``current``'s dtype and sharding (into one layer of a stacked array when ``layer`` is set)."""
    want = current.shape[1:] if layer is not None else current.shape
    if tuple(value.shape) != tuple(want):
        raise ValueError(f"kept adapter {what}: shape {list(value.shape)} but the run's adapter is {list(want)}")
    if layer is None:
        return jax.device_put(np.asarray(value).astype(current.dtype), current.sharding)
    return jax.jit(lambda c, v: c.at[layer].set(v.astype(c.dtype)), out_shardings=current.sharding)(
        current, np.asarray(value))


def _merged_kernel(kernel: jax.Array, a: np.ndarray, b: np.ndarray, scaling: float, layer: int | None) -> jax.Array:
    def merge(w, a, b):
        w32 = w[layer] if layer is not None else w
        out = (w32.astype(jnp.float32) + scaling * (a.astype(jnp.float32) @ b.astype(jnp.float32))).astype(w.dtype)
        return w.at[layer].set(out) if layer is not None else out

    return jax.jit(merge, out_shardings=kernel.sharding)(kernel, np.asarray(a), np.asarray(b))


def _replace(tree: Mapping, path: tuple[str, ...], value) -> dict:
    """A copy of ``tree`` (dicts along ``path`` copied, leaves shared) with ``value`` at ``path``."""
    out = dict(tree)
    out[path[0]] = value if len(path) == 1 else _replace(tree[path[0]], path[1:], value)
    return out
