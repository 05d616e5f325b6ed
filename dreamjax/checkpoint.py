"""dreamjax model checkpoints on disk (orbax), written atomically.

Layout of one checkpoint directory (also the layout of one step of a training run)::

    CKPT/
      params/     orbax PyTree checkpoint of the param tree (``{"params": …}`` as ``model.init`` returns)
      assets/     plain files: config.json (HF layout), tokenizer files, dataset_statistics.json, …

A run directory whose children are integer step directories of that layout resolves to its latest step.
Saving writes everything under a temporary sibling name (``.NAME.partial``) and renames it into place at
the end, so an interrupted save never leaves a directory that looks like a checkpoint. (Single-process
writer; multi-host training saves through orbax's CheckpointManager with the same item layout.)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

PARAMS_DIR, ASSETS_DIR, CONFIG_FILE = "params", "assets", "config.json"


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / PARAMS_DIR).is_dir() and (p / ASSETS_DIR / CONFIG_FILE).is_file()


def resolve(path: str | os.PathLike) -> Path:
    """The checkpoint directory for ``path``: itself, or the latest integer step directory inside it."""
    p = Path(path)
    if is_checkpoint(p):
        return p
    steps = sorted((int(c.name), c) for c in p.iterdir() if c.name.isdigit() and is_checkpoint(c)) \
        if p.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"{p}: not a dreamjax checkpoint (expected {PARAMS_DIR}/ and "
                                f"{ASSETS_DIR}/{CONFIG_FILE}, or integer step directories holding them)")
    return steps[-1][1]


def save(path: str | os.PathLike, params: Any, hf_config: Mapping[str, Any],
         assets: Mapping[str, bytes | str | os.PathLike] | None = None, *, overwrite: bool = False) -> Path:
    """Write ``params`` (jax or numpy tree) + ``assets/config.json`` + extra asset files to ``path``.

    ``assets`` maps file name → bytes, or → a path of a file to copy. Refuses an existing ``path`` unless
    ``overwrite``; the old checkpoint is replaced only once the new one is complete.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = path.with_name(f".{path.name}.partial")
    if tmp.exists():  # left by an interrupted save
        shutil.rmtree(tmp)
    try:
        ocp.PyTreeCheckpointer().save(tmp / PARAMS_DIR, params)
        (tmp / ASSETS_DIR).mkdir(parents=True)
        (tmp / ASSETS_DIR / CONFIG_FILE).write_text(json.dumps(dict(hf_config), indent=2, sort_keys=True))
        for name, content in (assets or {}).items():
            if name == CONFIG_FILE or "/" in name:
                raise ValueError(f"asset name {name!r} is reserved or not a plain file name")
            if isinstance(content, bytes):
                (tmp / ASSETS_DIR / name).write_bytes(content)
            else:
                shutil.copyfile(content, tmp / ASSETS_DIR / name)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_config(path: str | os.PathLike) -> dict:
    return json.loads((resolve(path) / ASSETS_DIR / CONFIG_FILE).read_text())


def load_params(path: str | os.PathLike, target: Any | None = None) -> Any:
    """Restore the param tree. ``target``: a tree of ``jax.ShapeDtypeStruct`` (with ``sharding``) to restore
    straight into those shardings and dtypes; None restores as stored on the default device."""
    ckpt = resolve(path) / PARAMS_DIR
    if target is None:
        return ocp.PyTreeCheckpointer().restore(ckpt)
    restore_args = jax.tree_util.tree_map(
        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype), target)
    return ocp.PyTreeCheckpointer().restore(ckpt, args=ocp.args.PyTreeRestore(item=target,
                                                                                restore_args=restore_args))


def assets_dir(path: str | os.PathLike) -> Path:
    return resolve(path) / ASSETS_DIR
