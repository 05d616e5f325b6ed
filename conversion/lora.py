"""peft LoRA adapters as Dream-VLA saves them (``lora_adapter/``), merged into base tensors on the fly.

Format facts (read in huggingface/peft: ``src/peft/utils/save_and_load.py`` ``get_peft_model_state_dict``;
``src/peft/tuners/lora/layer.py`` ``LoraLayer.update_layer``, ``Linear.merge``, ``Linear.get_delta_weight``;
``docs/source/developer_guides/checkpoint.md``; ``PeftModel.from_pretrained`` docstring):

* ``save_pretrained`` writes ``adapter_config.json`` (``peft_type`` "LORA", ``r``, ``lora_alpha``,
  ``target_modules``, ``use_rslora``, ``use_dora``, ``rank_pattern``, ``alpha_pattern``, ...) and
  ``adapter_model.safetensors`` (default) or ``adapter_model.bin`` (``safe_serialization=False``; a pickle,
  read here only through ``torch.load(weights_only=True)``). A non-default adapter name goes to a sub-dir.
* Keys: ``base_model.model.<module path>.lora_A.weight`` [r, in] and ``…lora_B.weight`` [out, r]. The
  ``base_model.model.`` prefix comes from PeftModel → LoraModel → model; the live parameters' adapter name
  (``lora_A.default.weight``) is removed on save, so saved keys never contain it; ``.weight`` is kept
  (lora_A/B are nn.Linear). With the default ``bias="none"`` nothing else is saved.
* ``scaling = lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``). Dream-VLA: r 32, α 16 → 0.5.
* Merge (``merge_and_unload``, ``safe_merge=False``): ``W += (B @ A) * scaling`` (``fan_in_fan_out`` False).
  ``PeftModel.from_pretrained`` keeps adapter weights in fp32 (``autocast_adapter_dtype=True``) even over a
  bf16 base, so the reference's merge at save time (CPU, bf16 base) is ``W ← bf16(fp32(W) + (B@A)·s)``
  with B@A and ·s in fp32: exactly what ``merge_weight`` computes (one rounding, to the base dtype).

Module paths are matched to base tensor names in either HF layout (``conversion.keymap``: Dream's
``model.layers…`` / ``visual…`` / ``projector…``, or transformers-5's ``model.language_model…`` /
``model.visual…`` / ``model.projector…``), whichever layout the adapter and the base use.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from conversion.keymap import detect_layout, from_canonical, to_canonical
from conversion.safetensors_io import SafetensorsFile

KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")  # peft's own preference order


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    """A loaded adapter: ``modules[path] = (A [r, in], B [out, r])`` keyed by the module path as saved."""

    path: Path
    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: list[str] | str | None
    modules: Mapping[str, tuple[np.ndarray, np.ndarray]]
    config: Mapping
    # as stored, so ``--keep-lora`` can write the same files back (``conversion.lora_checkpoint``)
    config_bytes: bytes = b""
    weights_file: str = ""
    tensor_names: tuple[str, ...] = ()  # in file order
    file_metadata: Mapping[str, str] | None = None  # the safetensors ``__metadata__`` (peft: {"format": "pt"})

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def load_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read a peft LoRA dir (or a fine-tuned checkpoint dir holding ``lora_adapter/``), checking it fully."""
    path = Path(path)
    if not (path / CONFIG_NAME).exists() and (path / "lora_adapter" / CONFIG_NAME).exists():
        path = path / "lora_adapter"
    cfg_path = path / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (not a peft adapter dir)")
    raw = cfg_path.read_bytes()
    cfg = json.loads(raw)
    _check_config(cfg, cfg_path)
    weights, tensors, metadata = _read_weights(path)
    return LoraAdapter(path, int(cfg["r"]), float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False)),
                       cfg.get("target_modules"), _pair_modules(tensors, int(cfg["r"]), path), cfg, raw,
                       weights.name, tuple(tensors), metadata)


def _check_config(cfg: Mapping, where: Path) -> None:
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for field in ("r", "lora_alpha"):
        if not isinstance(cfg.get(field), (int, float)) or cfg[field] <= 0:
            raise ValueError(f"{where}: {field} must be a positive number, got {cfg.get(field)!r}")
    unsupported = {"use_dora": bool(cfg.get("use_dora")), "lora_bias": bool(cfg.get("lora_bias")),
                   "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")), "rank_pattern": bool(cfg.get("rank_pattern")),
                   "alpha_pattern": bool(cfg.get("alpha_pattern")),
                   # full copies of modules / trained biases saved beside the adapters: not a LoRA update
                   "modules_to_save": bool(cfg.get("modules_to_save")),
                   "bias": cfg.get("bias", "none") not in (None, "none")}
    if any(unsupported.values()):
        raise ValueError(f"{where}: unsupported LoRA options {[k for k, v in unsupported.items() if v]} "
                         "(plain LoRA with one r and lora_alpha only and bias 'none', as Dream-VLA trains)")


def _read_weights(path: Path) -> tuple[Path, dict[str, np.ndarray], dict | None]:
    """(file, tensors in file order, safetensors ``__metadata__`` or None)."""
    for name in WEIGHT_NAMES:
        f = path / name
        if f.exists():
            if f.suffix == ".safetensors":
                st = SafetensorsFile(f)
                return f, {k: st.get(k) for k in st.keys()}, st.metadata or None
            from conversion.heads import load_torch_state_dict

            return f, load_torch_state_dict(f), None
    raise FileNotFoundError(f"{path}: no adapter weights ({' or '.join(WEIGHT_NAMES)})")


def _pair_modules(tensors: Mapping[str, np.ndarray], r: int, path: Path) -> dict:
    parts: dict[str, dict[str, np.ndarray]] = {}
    bad = []
    for key, arr in tensors.items():
        m = KEY.match(key)
        if m is None:
            bad.append(key)
            continue
        parts.setdefault(m["module"], {})[m["which"]] = arr
    if bad:
        raise ValueError(f"{path}: unexpected adapter tensors {sorted(bad)[:8]} (expected only "
                         "'base_model.model.<module>.lora_A.weight' / '.lora_B.weight')")
    modules = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: module {module!r} has lora_{''.join(ab)} but not both lora_A and lora_B")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"{path}: module {module!r}: lora_A {a.shape} / lora_B {b.shape} do not fit "
                             f"[r, in] / [out, r] with r={r}")
        modules[module] = (a, b)
    if not modules:
        raise ValueError(f"{path}: the adapter holds no LoRA tensors")
    return modules


def merge_weight(weight: np.ndarray, a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """``weight + (B @ A)·scaling`` in fp32, rounded once to ``weight``'s dtype (peft's CPU merge, see above)."""
    delta = (b.astype(np.float32) @ a.astype(np.float32)) * np.float32(scaling)
    return (weight.astype(np.float32) + delta).astype(weight.dtype)


class MergedTensors:
    """``name → tensor`` over a base checkpoint with the adapter merged into the tensors it adapts.

    Merges lazily, one tensor per call; tensors without an adapter pass through untouched. ``merged`` lists
    the base tensor names that receive a LoRA update.
    """

    def __init__(self, get_tensor: Callable[[str], np.ndarray], keys: Iterable[str], adapter: LoraAdapter, *,
                 source: str = "base checkpoint"):
        keys = list(keys)
        base_layout, lora_layout = detect_layout(keys), detect_layout(adapter.modules)
        present = set(keys)
        self._plan: dict[str, str] = {}
        unmatched = []
        for module in adapter.modules:
            name = from_canonical(to_canonical(module, lora_layout), base_layout) + ".weight"
            if name in present:
                self._plan[name] = module
            else:
                unmatched.append(module)
        if unmatched:
            raise ValueError(f"{adapter.path}: {len(unmatched)} adapter module(s) match no tensor of {source} "
                             f"(adapter layout {lora_layout!r}, base layout {base_layout!r}): {sorted(unmatched)[:8]}")
        self._get, self._adapter, self._source = get_tensor, adapter, source
        self.merged = sorted(self._plan)

    def __call__(self, name: str) -> np.ndarray:
        base = np.asarray(self._get(name))
        module = self._plan.get(name)
        if module is None:
            return base
        a, b = self._adapter.modules[module]
        if base.shape != (b.shape[0], a.shape[1]):
            raise ValueError(f"{self._source}: tensor {name!r} has shape {base.shape} but the LoRA update of "
                             f"{module!r} is {(b.shape[0], a.shape[1])}")
        return merge_weight(base, a, b, self._adapter.scaling)


def merge_lora(get_tensor: Callable[[str], np.ndarray], keys: Iterable[str], adapter: LoraAdapter, *,
               source: str = "base checkpoint") -> MergedTensors:
    """Wrap a ``name → tensor`` reader so base tensors come out with ``W + (α/r)·B@A`` merged.

    Every adapter module must map to a base tensor (else ``ValueError`` listing them). The result plugs into
    ``conversion.keymap.hf_to_params(merged, keys, config)``.
    """
    return MergedTensors(get_tensor, keys, adapter, source=source)
