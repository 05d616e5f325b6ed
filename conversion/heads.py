"""Dream-VLA head files (spec §6.5, §6.9) ⇄ dreamjax params: one table per head kind, used both ways.

A fine-tuned checkpoint dir holds one file per component, saved by the reference as
``torch.save(module.state_dict(), f"{component}--{step|latest}_checkpoint.pt")`` from a DDP-wrapped module
(so every key starts with ``module.``). Components and head kinds (detected from the key prefix):

====================== =========================================== ====================================
component              torch keys (after ``module.``)              dreamjax module (params root)
====================== =========================================== ====================================
action_head, ``l1``    ``model.<mlp_resnet>``                      ``L1RegressionActionHead`` (``model``)
action_head, ``ddim``  ``noise_predictor.mlp_resnet.<mlp_resnet>`` ``DiffusionActionHead``
action_head, ``flow``  ``flow_predictor.mlp_resnet.<mlp_resnet>``  ``FlowMatchingActionHead``
proprio_projector      ``fc1.*``, ``fc2.*``                        ``ProprioProjector``
noisy_action_projector ``fc1.*``, ``fc2.*``                        ``NoisyActionProjector``
====================== =========================================== ====================================

``<mlp_resnet>`` = ``layer_norm1``, ``fc1``, ``mlp_resnet_blocks.{i}.ffn.0`` (LayerNorm), ``.ffn.1``
(Linear), ``layer_norm2``, ``fc2``. Linear weights are transposed (``LINEAR``), everything else is copied;
dtypes and bytes are kept exactly (bf16 included), so file → params → file is byte-identical.

Security: ``.pt`` files are read only through ``torch.load(weights_only=True)`` (a pickle that would run
code is refused by torch), and anything but a flat ``{str: tensor}`` dict is refused. Safetensors files
(same keys) are read with ``conversion.safetensors_io``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import jax
import ml_dtypes
import numpy as np
from flax.linen import meta

from conversion.keymap import Row, _get, _linear, _norm, _set
from conversion.safetensors_io import SafetensorsFile, save_file
from dreamjax.models import action_heads as ah

COMPONENTS = ("action_head", "noisy_action_projector", "proprio_projector")
DDP_PREFIX = "module."
HEAD_SUFFIXES = (".pt", ".safetensors")
# action-head kind → (torch key prefix, dreamjax param path prefix, Flax module class)
HEAD_KINDS = {
    "l1": ("model.", "model", ah.L1RegressionActionHead),
    "ddim": ("noise_predictor.mlp_resnet.", "noise_predictor/mlp_resnet", ah.DiffusionActionHead),
    "flow": ("flow_predictor.mlp_resnet.", "flow_predictor/mlp_resnet", ah.FlowMatchingActionHead),
}


# ---------------------------------------------------------------- the tables


def mlp_resnet_rows(torch_prefix: str, path_prefix: str, num_blocks: int = 2) -> list[Row]:
    """Rows of one ``MLPResNet`` (torch state-dict order)."""
    t, p = torch_prefix, path_prefix + "/"
    rows = [*_norm(t + "layer_norm1", p + "layer_norm1"), *_linear(t + "fc1", p + "fc1")]
    for i in range(num_blocks):
        rows += [*_norm(f"{t}mlp_resnet_blocks.{i}.ffn.0", f"{p}mlp_resnet_blocks_{i}/ffn_0"),
                 *_linear(f"{t}mlp_resnet_blocks.{i}.ffn.1", f"{p}mlp_resnet_blocks_{i}/ffn_1")]
    return rows + [*_norm(t + "layer_norm2", p + "layer_norm2"), *_linear(t + "fc2", p + "fc2")]


PROJECTOR_ROWS: list[Row] = [*_linear("fc1", "fc1"), *_linear("fc2", "fc2")]


def table(component: str, kind: str | None = None, num_blocks: int = 2) -> list[Row]:
    """The rows for a component (``kind`` ∈ HEAD_KINDS for ``action_head``)."""
    _check_component(component)
    if component != "action_head":
        return PROJECTOR_ROWS
    if kind not in HEAD_KINDS:
        raise ValueError(f"action_head kind must be one of {sorted(HEAD_KINDS)}, got {kind!r}")
    torch_prefix, path_prefix, _ = HEAD_KINDS[kind]
    return mlp_resnet_rows(torch_prefix, path_prefix, num_blocks)


def detect_head_kind(keys, source: str = "state dict") -> str:
    """``l1`` / ``ddim`` / ``flow`` from the key prefix (every key must share one)."""
    keys = list(keys)
    for kind, (prefix, _, _) in HEAD_KINDS.items():
        if keys and all(k.startswith(prefix) for k in keys):
            return kind
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})
    raise ValueError(f"{source}: not an action head: keys must all start with one of "
                     f"{[p for p, _, _ in HEAD_KINDS.values()]}; found prefixes {prefixes[:6]}")


def build_module(component: str, *, kind: str | None = None, hidden_size: int, action_dim: int = 7,
                 proprio_dim: int = 8, num_blocks: int = 2, dtype="float32", param_dtype="float32"):
    """The Flax module a head file belongs to."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    if component == "action_head":
        return HEAD_KINDS[kind][2](hidden_size=hidden_size, action_dim=action_dim, num_blocks=num_blocks, **kw)
    if component == "proprio_projector":
        return ah.ProprioProjector(hidden_size=hidden_size, proprio_dim=proprio_dim, **kw)
    _check_component(component)
    return ah.NoisyActionProjector(hidden_size=hidden_size, **kw)


# ---------------------------------------------------------------- state dict ⇄ params


def head_state_dict_to_params(component: str, state_dict: Mapping[str, np.ndarray], *, source: str = "state dict",
                              **expected_dims) -> dict:
    """Torch-named tensors (``module.`` already stripped) → the Flax module's param tree (numpy, dtypes kept).

    The key set must match the table exactly and every tensor must have the shape the Flax module built
    from the inferred sizes expects; ``expected_dims`` (``hidden_size``, ``action_dim``, ``proprio_dim``)
    additionally pins sizes from the model config (those a component lacks are ignored). Errors name the
    key and ``source``.
    """
    _check_component(component)
    kind = detect_head_kind(state_dict, source) if component == "action_head" else None
    prefix = HEAD_KINDS[kind][0] if kind else ""
    block_key = re.compile(re.escape(prefix) + r"mlp_resnet_blocks\.(\d+)\.")
    blocks = {int(m.group(1)) for k in state_dict if (m := block_key.match(k))}
    rows = table(component, kind, len(blocks))
    expected = [r.hf for r in rows]
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: {component} tensors do not match the reference layout ({kind or 'projector'}); "
                         f"missing {missing or 'none'}; unexpected {unexpected or 'none'}")
    dims = _infer_dims(component, prefix, state_dict, len(blocks), source)
    unknown = sorted(set(expected_dims) - {"hidden_size", "action_dim", "proprio_dim", "num_blocks"})
    if unknown:
        raise TypeError(f"unknown expected dims {unknown}")
    for name, want in expected_dims.items():  # sizes a component does not have are not checked
        if want is not None and name in dims and dims[name] != want:
            raise ValueError(f"{source}: {component} has {name}={dims.get(name)} but the model expects {want}")
    shapes = _param_shapes(component, kind, dims)
    params: dict = {}
    for row in rows:
        arr = row.transform.to_jax(np.asarray(state_dict[row.hf]))
        path = tuple(row.path.split("/"))
        if arr.shape != _get(shapes, path).shape:
            raise ValueError(f"{source}: tensor {row.hf!r} has shape {tuple(np.shape(state_dict[row.hf]))}, "
                             f"which does not fit the other tensors ({component} with {dims})")
        _set(params, path, arr)
    return params


def params_to_head_state_dict(component: str, params: Mapping, kind: str | None = None) -> dict[str, np.ndarray]:
    """Exact inverse of ``head_state_dict_to_params``: torch-named numpy tensors in state-dict order.

    ``kind`` (action head only) is read from the param tree when not given.
    """
    _check_component(component)
    params = meta.unbox(params)
    if component == "action_head":
        found = [k for k, (_, path, _) in HEAD_KINDS.items() if path.split("/")[0] in params]
        if len(found) != 1 or (kind is not None and kind != found[0]):
            roots = {k: path.split("/")[0] for k, (_, path, _) in HEAD_KINDS.items()}
            raise ValueError(f"action_head params have top-level keys {sorted(params)}: need exactly one head root "
                             f"of {roots}" + ("" if kind is None else f" matching kind {kind!r}"))
        kind = found[0]
        root = _get(params, HEAD_KINDS[kind][1].split("/"))
        num_blocks = sum(1 for k in root if k.startswith("mlp_resnet_blocks_"))
    else:
        num_blocks = 0
    out = {}
    for row in table(component, kind, num_blocks):
        arr = np.asarray(_get(params, row.path.split("/")))
        out[row.hf] = row.transform.to_hf(arr, tuple(reversed(arr.shape)))
    return out


def _infer_dims(component, prefix, sd, num_blocks, source) -> dict:
    fc1, fc2 = np.shape(sd[prefix + "fc1.weight"]), np.shape(sd[prefix + "fc2.weight"])
    if len(fc1) != 2 or len(fc2) != 2:
        raise ValueError(f"{source}: {prefix}fc1.weight / fc2.weight must be 2-D, got {fc1} / {fc2}")
    if component == "action_head":
        return dict(hidden_size=fc1[0], action_dim=fc2[0], num_blocks=num_blocks)
    if component == "proprio_projector":
        return dict(hidden_size=fc2[0], proprio_dim=fc1[1])
    return dict(hidden_size=fc2[0])


def _param_shapes(component, kind, dims) -> dict:
    module = build_module(component, kind=kind, **dims)
    d, a = dims["hidden_size"], dims.get("action_dim", 1)
    x = {"action_head": (1, 1, a * d), "proprio_projector": (1, dims.get("proprio_dim", 1)),
         "noisy_action_projector": (1, 1, 1)}[component]
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct(x, np.float32))
    return meta.unbox(shapes["params"])


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"unknown head component {component!r}; expected one of {COMPONENTS}")


# ---------------------------------------------------------------- files


def head_file_name(component: str, step: int | str = "latest", fmt: str = "pt") -> str:
    """``{component}--{step|latest}_checkpoint.{pt|safetensors}``, the reference's naming."""
    _check_component(component)
    return f"{component}--{step}_checkpoint.{fmt}"


def head_files(directory: str | os.PathLike, component: str) -> list[Path]:
    """Files in ``directory`` whose name contains ``component`` and "checkpoint" (the reference's eval rule),
    among ``.pt`` / ``.safetensors`` files (hidden temp files ignored)."""
    _check_component(component)
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix in HEAD_SUFFIXES and component in p.name and "checkpoint" in p.name)


def find_head_file(directory: str | os.PathLike, component: str) -> Path:
    """The one head file of ``component`` in ``directory`` (``head_files``); 0 or ≥ 2 matches are errors."""
    directory = Path(directory)
    found = head_files(directory, component)
    if len(found) != 1:
        names = [p.name for p in found] or "none"
        raise ValueError(f"{directory}: need exactly one {component} checkpoint file (name containing "
                         f"{component!r} and 'checkpoint', {'/'.join(HEAD_SUFFIXES)}); found {names}")
    return found[0]


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.pt`` / ``.bin`` flat state dict as numpy arrays, read safely and kept byte-exact.

    ``torch.load(..., weights_only=True)`` refuses pickles that reference arbitrary code; the result must then
    be a flat ``{str: tensor}`` mapping (nested dicts, modules, non-tensor values are refused).
    """
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # UnpicklingError (refused global), RuntimeError (not a torch file), ...
        # torch's message advises retrying with weights_only=False; keep only the cause
        m = re.search(r"unsupported (?:global: )?(GLOBAL \S+|operand \S+)", str(e), re.IGNORECASE)
        detail = f"{type(e).__name__}: unsupported {m.group(1)}" if m else f"{type(e).__name__}: {str(e).strip()[:300]}"
        raise ValueError(f"{path}: refused or unreadable as a weights-only torch file (dreamjax never unpickles "
                         f"code or non-tensor objects): {detail}") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a flat dict of tensors, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}; expected a flat dict of str → tensor "
                             "(nested dicts and other objects are refused)")
        try:
            out[k] = tensor_to_numpy(v)
        except TypeError as e:  # a dtype numpy cannot hold
            raise ValueError(f"{path}: tensor {k!r}: {e}") from e
    return out


def strip_ddp_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the DDP ``module.`` prefix when every key has it (the reference's saved form)."""
    if state_dict and all(k.startswith(DDP_PREFIX) for k in state_dict):
        return {k[len(DDP_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def read_head_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of one head file as stored (``.pt`` safely, or ``.safetensors``), keys untouched."""
    path = Path(path)
    if path.suffix == ".safetensors":
        f = SafetensorsFile(path)
        return {k: f.get(k) for k in f.keys()}
    if path.suffix in (".pt", ".bin"):
        return load_torch_state_dict(path)
    raise ValueError(f"{path}: head files are .pt or .safetensors")


def load_head_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of one head file, ``module.`` prefix stripped."""
    return strip_ddp_prefix(read_head_file(path))


def load_head(path: str | os.PathLike, component: str, **expected_dims) -> tuple[dict, str | None]:
    """``path`` (a head file, or a checkpoint dir searched with ``find_head_file``) → (params, kind).

    ``kind`` is ``l1`` / ``ddim`` / ``flow`` for the action head, None for projectors.
    """
    path = Path(path)
    if path.is_dir():
        path = find_head_file(path, component)
    return head_from_state_dict(component, load_head_state_dict(path), str(path), **expected_dims)


def head_from_state_dict(component: str, state_dict: Mapping[str, np.ndarray], source: str,
                         **expected_dims) -> tuple[dict, str | None]:
    """A (prefix-stripped) head state dict → (params, kind), as ``load_head``."""
    kind = detect_head_kind(state_dict, source) if component == "action_head" else None
    return head_state_dict_to_params(component, state_dict, source=source, **expected_dims), kind


def save_head_file(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray], *, fmt: str | None = None,
                   ddp_prefix: bool = True) -> Path:
    """Write a head state dict as the reference does (``torch.save`` of a plain dict of tensors, keys prefixed
    ``module.``), or as safetensors with the same keys. ``fmt`` defaults to the path's suffix. Atomic."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    items = {(DDP_PREFIX if ddp_prefix else "") + k: np.asarray(v) for k, v in state_dict.items()}
    if fmt == "safetensors":
        save_file(items, path)
        return path
    if fmt != "pt":
        raise ValueError(f"{path}: fmt must be 'pt' or 'safetensors', got {fmt!r}")
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({k: numpy_to_tensor(v) for k, v in items.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_head(directory: str | os.PathLike, component: str, params: Mapping, *, kind: str | None = None,
              step: int | str = "latest", fmt: str = "pt", ddp_prefix: bool = True) -> Path:
    """params → ``directory/{component}--{step}_checkpoint.{fmt}``."""
    sd = params_to_head_state_dict(component, params, kind)
    return save_head_file(Path(directory) / head_file_name(component, step, fmt), sd, fmt=fmt, ddp_prefix=ddp_prefix)


# ---------------------------------------------------------------- torch ⇄ numpy, byte-exact


def tensor_to_numpy(t) -> np.ndarray:
    """A torch tensor as numpy with the same dtype and bytes (bf16 → ml_dtypes.bfloat16)."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def numpy_to_tensor(a: np.ndarray):
    """Inverse of ``tensor_to_numpy`` (a copy, so the tensor owns writable memory)."""
    import torch

    a = np.array(a, copy=True, order="C")
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
