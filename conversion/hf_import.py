"""HF/PyTorch snapshot → dreamjax checkpoint, streaming (``dreamjax convert``).

Each dreamjax param is built with ``jax.make_array_from_callback`` straight into its target sharding: the
callback reads, from the memory-mapped safetensors, only the slice that one device owns (for a stacked
``layers`` param, only the layers in that slice), applies the key map's transform to that slice, and the
array is handed to orbax's partial save and dropped. No host ever holds the whole model; in a multi-process
run each process reads only the slices its devices own. Dtypes are kept as stored unless ``dtype`` is
given.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import numpy as np
from tqdm import tqdm

from conversion.keymap import LINEAR, PATCH_EMBED, detect_layout, expected_hf_keys, hf_to_target
from conversion.safetensors_io import SafetensorsDir
from dreamjax import checkpoint, sharding
from dreamjax.models.config import DreamVLConfig

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json",
                   "special_tokens_map.json", "generation_config.json", "preprocessor_config.json",
                   "chat_template.json", "spm.model", "dreamjax_tokenizer.json")
EXTRA_ASSETS = ("dataset_statistics.json",)
CHUNK_BYTES = 64 * 1024**2  # HF rows read per pread when filling one block


class ConversionError(ValueError):
    pass


def _target_shape(hf_shape: tuple[int, ...], transform) -> tuple[int, ...]:
    if transform is LINEAR:
        return tuple(reversed(hf_shape))
    if transform is PATCH_EMBED:
        return (math.prod(hf_shape[1:]), hf_shape[0])
    return tuple(hf_shape)


def _slice_reader(st: SafetensorsDir, keys: list[str], transform, stacked: bool, dtype, merged=None) -> Callable:
    """Callback for make_array_from_callback: index (tuple of slices) → that block of the dreamjax param.

    make_array_from_callback asks once per local device; devices holding the same block (replicated mesh
    axes) share one read.
    """
    cache: dict = {}

    def read(index):
        key = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)
        if key not in cache:
            cache[key] = _read_block(st, keys, transform, stacked, dtype, index, merged)
        return cache[key]
    return read


def _read_block(st: SafetensorsDir, keys: list[str], transform, stacked: bool, dtype, index,
                merged=None) -> np.ndarray:
    """One device's block: read only the HF rows it needs (pread), a chunk at a time, transformed straight
    into one page-aligned output buffer.

    The aligned buffer matters for memory: on the CPU backend ``device_put`` of a page-aligned numpy array
    aliases it instead of copying, so the block read here *is* the device buffer. Together with the chunked
    fill (a Linear weight is transposed chunk by chunk, not via a whole transposed copy) a tensor costs about
    its own size plus one chunk, not three copies of it.
    """
    full = _target_shape(st.shape(keys[0]), transform)
    if stacked:
        full = (len(keys),) + full
    index = tuple(index) + (slice(None),) * (len(full) - len(index))
    out = aligned_empty(tuple(len(range(*s.indices(n))) for s, n in zip(index, full)), dtype)
    if stacked:
        for j, i in enumerate(range(len(keys))[index[0]]):
            _fill_one(st, keys[i], transform, index[1:], out[j], merged)
    else:
        _fill_one(st, keys[0], transform, index, out, merged)
    return out


def aligned_empty(shape: tuple[int, ...], dtype, align: int = 4096) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + n].view(dtype).reshape(shape)


def _fill_one(st: SafetensorsDir, key: str, transform, index, out: np.ndarray, merged=None) -> None:
    """``out[...] = transform(HF tensor)[index]`` (cast to out's dtype), reading about :data:`CHUNK_BYTES` of
    HF rows at a time."""
    shape = st.shape(key)
    if merged is not None and key in merged.merged:  # LoRA update: needs the whole tensor
        out[...] = transform.to_jax(merged(key))[index]
        return
    if not shape:
        out[...] = np.asarray(st.get(key))
        return
    # which dreamjax axis is the HF tensor's first (row) axis: the output axis of Linear/patch kernels
    row_axis = 1 if transform in (LINEAR, PATCH_EMBED) else 0
    start, stop, step = index[row_axis].indices(shape[0])
    if step != 1:
        raise ConversionError(f"strided shard index {index} for {key}")
    rows_per_chunk = max(1, CHUNK_BYTES // max(1, math.prod(shape[1:]) * st.dtype(key).itemsize))
    rest = tuple(slice(None) if a == row_axis else s for a, s in enumerate(index))
    for r0 in range(start, stop, rows_per_chunk):
        r1 = min(stop, r0 + rows_per_chunk)
        block = transform.to_jax(st.read_rows(key, r0, r1))[rest]
        dst = tuple(slice(r0 - start, r1 - start) if a == row_axis else slice(None) for a in range(out.ndim))
        out[dst] = block


def plan(config: DreamVLConfig, keys: Iterable[str]) -> dict[tuple[str, ...], list[str]]:
    """Param path → the HF tensor names it is built from (one, or one per layer in order)."""
    layout = detect_layout(keys)
    groups: dict[tuple[str, ...], list] = {}
    for key in expected_hf_keys(config, layout):
        t = hf_to_target(key, config, layout)
        groups.setdefault(t.path, []).append((t.layer or 0, key))
    return {p: [k for _, k in sorted(v)] for p, v in groups.items()}


def convert(src: str | os.PathLike, out: str | os.PathLike, *, mesh=None, rules=None, dtype: str | None = None,
            scan_layers: bool = False, overwrite: bool = False, group_bytes: int | None = None,
            merge_lora: str | os.PathLike | None = None, keep_lora: str | os.PathLike | None = None) -> Path:
    """Convert an HF snapshot dir (config.json + safetensors [+ tokenizer files, dataset_statistics.json])
    into a dreamjax checkpoint at ``out``.

    dtype: None keeps each tensor's stored dtype; "float32"/"bfloat16" converts. scan_layers: stack layers
    (the layout of scanned configs). mesh: target shardings (default: one device). group_bytes: arrays are
    handed to orbax in groups of about this size (default: the largest tensor), bounding peak memory.
    merge_lora: a peft adapter dir merged into the weights. keep_lora: a peft adapter dir stored unmerged as
    LoRA params beside them (``conversion.lora_checkpoint``; the adapter is small and read whole).
    """
    if merge_lora is not None and keep_lora is not None:
        raise ConversionError("--merge-lora and --keep-lora exclude each other: merge the adapter into the weights "
                              "or keep it as LoRA params")
    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json (expected an HF snapshot directory)")
    hf_config = json.loads((src / "config.json").read_text())
    st = SafetensorsDir(src)
    keys = st.keys()
    stored = sorted({str(st.dtype(k)) for k in keys})
    config = DreamVLConfig.from_hf_dict(hf_config, scan_layers=scan_layers,
                                        param_dtype=dtype or ("bfloat16" if stored == ["bfloat16"] else "float32"))
    not_float = [k for k in keys if st.dtype(k).kind != "f" and str(st.dtype(k)) != "bfloat16"]
    if not_float:
        raise ConversionError(f"{src}/{st.file_of(not_float[0])}: tensor {not_float[0]} has dtype "
                              f"{st.dtype(not_float[0])}; model weights must be float32/bfloat16/float16")
    layout = detect_layout(keys)
    expected = expected_hf_keys(config, layout)
    missing, unexpected = sorted(set(expected) - set(keys)), sorted(set(keys) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"{src}: tensor names do not match config.json's architecture (layout {layout!r}): "
                              f"missing {missing[:8] or 'none'}{' …' if len(missing) > 8 else ''}; unexpected "
                              f"{unexpected[:8] or 'none'}{' …' if len(unexpected) > 8 else ''}")
    from dreamjax.pretrained import _abstract_params  # the model's param tree with target shardings

    target = _abstract_params(config, mesh, sharding.rules_from_config(rules))["params"]
    flat_target = {tuple(k.key for k in kp): v for kp, v in jax.tree_util.tree_leaves_with_path(target)}
    groups = plan(config, keys)
    if set(groups) != set(flat_target):
        raise ConversionError(f"key map and model disagree on params: {sorted(set(groups) ^ set(flat_target))[:8]}")

    merged = None
    if merge_lora is not None:
        from conversion.lora import load_adapter, merge_lora as make_merged

        merged = make_merged(st.get, keys, load_adapter(merge_lora), source=str(src))
        log.info("merging LoRA %s into %d tensors", merge_lora, len(merged.merged))
    lora_tree, lora_assets = None, {}
    if keep_lora is not None:  # checked in full before anything is written
        from conversion.lora import load_adapter
        from conversion.lora_checkpoint import keep_adapter

        adapter = load_adapter(keep_lora)
        lora_tree, lora_assets = keep_adapter(adapter, config, kernel_shape=lambda p: flat_target[p].shape, dtype=dtype)
        log.info("keeping LoRA %s as LoRA params (%d modules)", adapter.path, len(adapter.modules))
    largest = max(math.prod(st.shape(k)) * st.dtype(k).itemsize for k in keys)
    group_bytes = group_bytes or largest // 2
    n_bytes = sum(math.prod(st.shape(k)) * st.dtype(k).itemsize for k in keys)
    log.info("converting %s: %d tensors, %.2f GB (%s), layout %s → %s", src, len(keys), n_bytes / 1e9,
             "/".join(stored), layout, out)
    pending: dict = {}
    pending_bytes = 0
    with checkpoint.ParamsWriter(out, overwrite=overwrite) as writer, \
            tqdm(total=n_bytes, unit="B", unit_scale=True, desc="convert", disable=not sys.stderr.isatty()) as bar:
        for path, hf_keys in groups.items():
            tgt = flat_target[path]
            transform = hf_to_target(hf_keys[0], config, layout).transform
            stacked = hf_to_target(hf_keys[0], config, layout).stacked
            for k in hf_keys:
                want = _target_shape(st.shape(k), transform)
                have = tgt.shape[1:] if stacked else tgt.shape
                if tuple(want) != tuple(have):
                    raise ConversionError(f"{src}/{st.file_of(k)}: tensor {k} has shape {list(st.shape(k))}; "
                                          f"config.json implies {list(_hf_shape_hint(have, transform))}")
            out_dtype = np.dtype(dtype) if dtype else st.dtype(hf_keys[0])
            arr_bytes = math.prod(tgt.shape) * out_dtype.itemsize
            if pending and pending_bytes + arr_bytes > group_bytes:  # a big tensor is written on its own
                writer.add({"params": pending})
                pending, pending_bytes = {}, 0
            arr = jax.make_array_from_callback(tgt.shape, tgt.sharding,
                                               _slice_reader(st, hf_keys, transform, stacked, out_dtype, merged))
            _put(pending, path, arr)
            pending_bytes += arr_bytes
            del arr
            bar.update(sum(math.prod(st.shape(k)) * st.dtype(k).itemsize for k in hf_keys))
            if pending_bytes >= group_bytes:
                writer.add({"params": pending})
                pending, pending_bytes = {}, 0
        if pending:
            writer.add({"params": pending})
        assets = {name: src / name for name in TOKENIZER_FILES + EXTRA_ASSETS if (src / name).is_file()}
        heads, info = _convert_heads(src, config)
        if heads:
            writer.write_heads(heads)
            assets[checkpoint.HEADS_FILE] = json.dumps(info, indent=2).encode()
        if lora_tree is not None:
            from conversion.lora_checkpoint import write_lora_item

            write_lora_item(writer, lora_tree)
            assets.update(lora_assets)
        if dtype:
            hf_config = dict(hf_config, torch_dtype=dtype)
        return writer.finish(hf_config, assets)


def _hf_shape_hint(shape, transform):
    return tuple(reversed(shape)) if transform is LINEAR else tuple(shape)


def _convert_heads(src: Path, config: DreamVLConfig) -> tuple[dict, dict]:
    """Head files in ``src`` → ({component: params}, {component: {"kind", "file"}})."""
    from conversion import heads as head_io

    params, info = {}, {}
    for component in head_io.COMPONENTS:
        if not head_io.head_files(src, component):
            continue
        path = head_io.find_head_file(src, component)  # refuses two candidates, naming them
        raw = head_io.read_head_file(path)  # read once: keys as stored tell whether DDP's prefix was there
        params[component], kind = head_io.head_from_state_dict(component, head_io.strip_ddp_prefix(raw), str(path),
                                                               hidden_size=config.hidden_size)
        info[component] = {"kind": kind, "file": path.name,
                           "ddp_prefix": all(k.startswith(head_io.DDP_PREFIX) for k in raw)}
        log.info("head %s (%s) from %s", component, kind or "projector", path.name)
    return params, info


def _put(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value
