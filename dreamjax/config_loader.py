"""Load ml_collections config files (``configs/*.py`` with ``get_config()``) and apply command-line
overrides of the form ``--config.a.b=value`` (values parsed as Python literals, else kept as strings)."""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import ml_collections

from dreamjax.models.config import DreamVLConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _resolve(path_or_name: str | os.PathLike) -> Path:
    p = Path(path_or_name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.py"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"config {path_or_name!r}: no such file (also looked in {CONFIG_DIR})")


def load_config(path_or_name: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    path = _resolve(path_or_name)
    spec = importlib.util.spec_from_file_location(f"dreamjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file must define get_config()")
    cfg = module.get_config()
    for item in overrides:
        apply_override(cfg, item, source=str(path))
    return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str, source: str = "config") -> None:
    """Apply one ``--config.a.b=value`` (the ``--config.`` prefix is optional)."""
    key, sep, raw = item.removeprefix("--").removeprefix("config.").partition("=")
    if not sep:
        raise ValueError(f"override {item!r} must look like --config.a.b=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            raise KeyError(f"{source}: no config field {'.'.join(parts[:i + 1])!r} (override {item!r})")
        node = node[part]
    if parts[-1] not in node:
        raise KeyError(f"{source}: no config field {key!r} (override {item!r}); fields here: {sorted(node.keys())}")
    node[parts[-1]] = value


def model_config(cfg: ml_collections.ConfigDict) -> DreamVLConfig:
    """The ``model`` section as a validated ``DreamVLConfig``."""
    m = cfg.model.to_dict() if isinstance(cfg.model, ml_collections.ConfigDict) else dict(cfg.model)
    return DreamVLConfig.from_dict(m)
