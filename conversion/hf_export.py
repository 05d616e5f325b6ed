"""dreamjax checkpoint → HF layout (``dreamjax export``): sharded safetensors + index, config.json and the
tokenizer / statistics assets, loadable by the reference PyTorch code.

Params are restored one at a time (orbax partial restore) and written tensor by tensor into shards of at
most ``max_shard_bytes``; the output directory is built under a temporary name and renamed when complete.
Tensors keep the checkpoint's dtype (bytes unchanged) unless ``dtype`` is given.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from conversion import safetensors_io
from conversion.keymap import expected_hf_keys, from_canonical, hf_shape, rows_for
from dreamjax import checkpoint
from dreamjax.models.config import DreamVLConfig

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 1024**3  # the HF hub's usual 5 GB shards


def _restore_leaf(ckpt, meta: dict, path: tuple[str, ...]) -> np.ndarray:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(kp, m):
        here = tuple(k.key for k in kp)
        return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev) if here == path else checkpoint.PLACEHOLDER

    tree = jax.tree_util.tree_map_with_path(target, meta)
    got = checkpoint.load_params(ckpt, {"params": tree})["params"]
    for p in path:
        got = got[p]
    return np.asarray(got)


def export(ckpt: str | os.PathLike, out: str | os.PathLike, *, layout: str = "dream", dtype: str | None = None,
           max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> Path:
    """Write the HF snapshot of a dreamjax checkpoint to ``out`` (``layout``: "dream" or "hf5" names)."""
    ckpt = checkpoint.resolve(ckpt)
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if layout not in ("dream", "hf5"):
        raise ValueError(f"layout {layout!r}: expected 'dream' (visual.*, model.*) or 'hf5' (model.language_model.*)")
    hf_config = checkpoint.load_config(ckpt)
    meta, scanned = checkpoint.params_metadata(ckpt)["params"], checkpoint.stored_scanned(ckpt)
    config = DreamVLConfig.from_hf_dict(hf_config, scan_layers=scanned)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shards, current, current_bytes, weight_map = [], [], 0, {}

        def flush():
            nonlocal current, current_bytes
            if current:
                name = f"part-{len(shards):05d}.safetensors"
                safetensors_io.save_file(current, tmp / name, metadata={"format": "pt"})
                shards.append((name, [k for k, _ in current]))
                current, current_bytes = [], 0

        rows = rows_for(config)
        with tqdm(total=len(expected_hf_keys(config)), unit="tensor", desc="export", disable=not sys.stderr.isatty()) as bar:
            for row in rows:
                n = (config.vision.depth if row.stack == "vision" else config.num_hidden_layers) if row.stack else 0
                if row.stack and scanned:
                    leaf = _restore_leaf(ckpt, meta, tuple(row.path.replace("blocks_{i}", "blocks")
                                                           .replace("layers_{i}", "layers").split("/")))
                    items = [(row.hf.replace("{i}", str(i)), leaf[i]) for i in range(n)]
                elif row.stack:
                    items = [(row.hf.replace("{i}", str(i)),
                              _restore_leaf(ckpt, meta, tuple(row.path.replace("{i}", str(i)).split("/"))))
                             for i in range(n)]
                else:
                    items = [(row.hf, _restore_leaf(ckpt, meta, tuple(row.path.split("/"))))]
                for hf_key, arr in items:
                    shape = hf_shape(row, arr, config)
                    tensor = np.ascontiguousarray(row.transform.to_hf(arr, shape))
                    if dtype:
                        tensor = tensor.astype(np.dtype(dtype))
                    if current and current_bytes + tensor.nbytes > max_shard_bytes:
                        flush()
                    current.append((from_canonical(hf_key, layout), tensor))
                    current_bytes += tensor.nbytes
                    bar.update()
        flush()
        total_size = 0
        if len(shards) == 1:
            (tmp / shards[0][0]).rename(tmp / "model.safetensors")
        else:
            for i, (name, keys) in enumerate(shards):
                final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                (tmp / name).rename(tmp / final)
                for k in keys:
                    weight_map[k] = final
            total_size = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        if dtype:
            hf_config = dict(hf_config, torch_dtype=dtype)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        for f in checkpoint.assets_dir(ckpt).iterdir():
            if f.is_file() and f.name != checkpoint.CONFIG_FILE:
                shutil.copyfile(f, tmp / f.name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s → %s (%d shard%s)", ckpt, out, max(1, len(shards)), "s" if len(shards) > 1 else "")
    return out
