"""dreamjax checkpoint → HF layout (``dreamjax export``): sharded safetensors + index, config.json and the
tokenizer / statistics assets, loadable by the reference PyTorch code.

The shard plan (which tensor goes in which file, at most ``max_shard_bytes`` each) comes from the
checkpoint's metadata alone; then params are restored one at a time (orbax partial restore) and each
tensor is streamed into its shard file, so about one param is in memory at a time. The output directory
is built under a temporary name and renamed when complete. Tensors keep the checkpoint's dtype (bytes
unchanged) unless ``dtype`` is given.

A checkpoint with kept LoRA adapters (``convert --keep-lora``, ``conversion.lora_checkpoint``) exports merged
by default (each adapted Linear as ``--merge-lora`` would have merged it on import, byte for byte); with
``lora_adapter_out`` the base weights go out unmerged and the adapters as a peft adapter dir.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
from tqdm import tqdm

from conversion.keymap import LINEAR, PATCH_EMBED, Row, from_canonical, hf_shape, rows_for
from conversion.safetensors_io import StreamingWriter
from dreamjax import checkpoint
from dreamjax.models.config import DreamVLConfig

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 1024**3  # the HF hub's usual 5 GB shards
CHUNK_BYTES = 64 * 1024**2  # rows of one tensor transformed and written at a time


def _restore_leaf(ckpt, meta: dict, path: tuple[str, ...]) -> np.ndarray:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(kp, m):
        here = tuple(k.key for k in kp)
        return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev) if here == path else checkpoint.PLACEHOLDER

    got = checkpoint.load_params(ckpt, {"params": jax.tree_util.tree_map_with_path(target, meta)})["params"]
    for p in path:
        got = got[p]
    return np.asarray(got)


def _hf_row_blocks(row: Row, arr: np.ndarray, shape: tuple[int, ...], dtype) -> Iterator[np.ndarray]:
    """The HF tensor ``row.transform.to_hf(arr, shape)`` as blocks of its rows, about :data:`CHUNK_BYTES` each, so
    a transposed (Linear / patch-embed) weight never exists as a whole second copy."""
    hf_rows_on_axis1 = row.transform in (LINEAR, PATCH_EMBED)  # HF rows = the dreamjax kernel's output axis
    per_row = max(1, math.prod(shape[1:]) * max(arr.dtype.itemsize, np.dtype(dtype).itemsize))
    step = max(1, CHUNK_BYTES // per_row)
    for r0 in range(0, shape[0], step):
        r1 = min(shape[0], r0 + step)
        part = arr[:, r0:r1] if hf_rows_on_axis1 else arr[r0:r1]
        yield row.transform.to_hf(part, (r1 - r0,) + tuple(shape[1:])).astype(dtype, copy=False)


def _tensors(config: DreamVLConfig, meta: dict, scanned: bool) -> Iterator[tuple[Row, str, tuple, int | None]]:
    """(row, canonical HF name, param path, layer index in a stacked param) for every tensor, table order."""
    for row in rows_for(config):
        if not row.stack:
            yield row, row.hf, tuple(row.path.split("/")), None
            continue
        n = config.vision.depth if row.stack == "vision" else config.num_hidden_layers
        for i in range(n):
            if scanned:
                path = tuple(row.path.replace("blocks_{i}", "blocks").replace("layers_{i}", "layers").split("/"))
                yield row, row.hf.replace("{i}", str(i)), path, i
            else:
                yield row, row.hf.replace("{i}", str(i)), tuple(row.path.replace("{i}", str(i)).split("/")), None


def _leaf_meta(meta: dict, path: tuple[str, ...]):
    for p in path:
        meta = meta[p]
    return meta


def _export_heads(ckpt, out_dir: Path) -> None:
    """Write the Dream-VLA heads back under their original file names, as the reference saves them
    (``{component}--…_checkpoint.pt`` state dicts, DDP ``module.`` prefix kept as it was)."""
    from conversion import heads as head_io

    heads, info = checkpoint.load_heads(ckpt)
    for component, params in heads.items():
        name = info[component]["file"]
        sd = head_io.params_to_head_state_dict(component, params, info[component]["kind"])
        head_io.save_head_file(out_dir / name, sd, fmt="safetensors" if name.endswith(".safetensors") else "pt",
                               ddp_prefix=info[component]["ddp_prefix"])


def export(ckpt: str | os.PathLike, out: str | os.PathLike | None, *, layout: str = "dream", dtype: str | None = None,
           max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False,
           lora_adapter_out: str | os.PathLike | None = None) -> Path:
    """Write the HF snapshot of a dreamjax checkpoint to ``out`` (``layout``: "dream" or "hf5" names).

    Kept LoRA adapters are merged in, unless ``lora_adapter_out`` is given: then they are written there as a peft
    adapter dir (keys in the layout they were converted from) and ``out`` (optional then) gets the base unmerged.
    Returns ``out`` (or ``lora_adapter_out`` when ``out`` is None)."""
    from conversion import lora_checkpoint

    ckpt = checkpoint.resolve(ckpt)
    if out is None and lora_adapter_out is None:
        raise ValueError("export: give --out (the model) and/or --lora-adapter-out (kept LoRA adapters)")
    for target in (out, lora_adapter_out):
        if target is not None and Path(target).exists() and not overwrite:
            raise FileExistsError(f"{Path(target).absolute()} exists; pass --overwrite to replace it")
    if layout not in ("dream", "hf5"):
        raise ValueError(f"layout {layout!r}: expected 'dream' (visual.*, model.*) or 'hf5' (model.language_model.*)")
    kept = lora_checkpoint.KeptLora(ckpt) if lora_checkpoint.has_kept_lora(ckpt) else None
    if lora_adapter_out is not None:
        if kept is None:
            raise ValueError(f"{ckpt}: --lora-adapter-out, but the checkpoint keeps no LoRA adapters (convert with "
                             "--keep-lora ADAPTER_DIR to keep them)")
        lora_checkpoint.write_adapter_dir(kept, lora_adapter_out, overwrite=overwrite)
        if out is None:
            return Path(lora_adapter_out).absolute()
    merge = kept.canonical_modules() if kept is not None and lora_adapter_out is None else {}
    out = Path(out).absolute()
    hf_config = checkpoint.load_config(ckpt)
    meta, scanned = checkpoint.params_metadata(ckpt)["params"], checkpoint.stored_scanned(ckpt)
    config = DreamVLConfig.from_hf_dict(hf_config, scan_layers=scanned)

    # ---- plan: tensors → shards, from metadata only
    plan, shards, size = [], [[]], 0
    for row, name, path, layer in _tensors(config, meta, scanned):
        m = _leaf_meta(meta, path)
        shape = hf_shape(row, tuple(m.shape[1:] if layer is not None else m.shape), config)
        dt = np.dtype(dtype) if dtype else np.dtype(m.dtype)
        nbytes = math.prod(shape) * dt.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(len(plan))
        plan.append((row, from_canonical(name, layout), path, layer, shape, dt, name))
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])

    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        leaf_path, leaf = None, None
        with tqdm(total=len(plan), unit="tensor", desc="export", disable=not sys.stderr.isatty()) as bar:
            for fname, members in zip(names, shards):
                writer = StreamingWriter(tmp / fname, [(plan[j][1], plan[j][5], plan[j][4]) for j in members],
                                         metadata={"format": "pt"})
                try:
                    for j in members:
                        row, hf_name, path, layer, shape, dt, canon = plan[j]
                        if path != leaf_path:  # one restore per param (a stacked param serves all its layers)
                            leaf_path, leaf, arr = path, None, None
                            checkpoint.release_host_memory()
                            leaf = _restore_leaf(ckpt, meta, path)
                        arr = leaf[layer] if layer is not None else leaf
                        module = canon.removesuffix(".weight")
                        if row.transform is LINEAR and module in merge:  # a kept LoRA adapter, merged
                            merged = lora_checkpoint.merged_hf_weight(row.transform.to_hf(arr, shape), module, merge,
                                                                      kept.scaling)
                            writer.write(hf_name, merged.astype(dt, copy=False))
                        elif not shape:
                            writer.write(hf_name, arr.astype(dt, copy=False))
                        else:
                            writer.write_blocks(hf_name, _hf_row_blocks(row, arr, shape, dt))
                        bar.update()
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
        leaf = None
        if len(names) > 1:
            weight_map = {plan[j][1]: fname for fname, members in zip(names, shards) for j in members}
            total = sum((tmp / f).stat().st_size for f in names)
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        if dtype:
            hf_config = dict(hf_config, torch_dtype=dtype)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        for f in checkpoint.assets_dir(ckpt).iterdir():
            if f.is_file() and f.name not in (checkpoint.CONFIG_FILE, checkpoint.HEADS_FILE,
                                              *lora_checkpoint.LORA_ASSETS):
                shutil.copyfile(f, tmp / f.name)
        _export_heads(ckpt, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s → %s (%d shard%s)", ckpt, out, len(names), "s" if len(names) > 1 else "")
    return out
