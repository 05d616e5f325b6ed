"""``dreamjax.DreamVLA``: a Dream-VLA policy — load, ``predict_action``, save (DESIGN.md public API, spec §6.6).

``DreamVLA.from_pretrained(path, ...)`` reads

* a dreamjax checkpoint (``dreamjax convert`` output or :meth:`DreamVLA.save_pretrained`): ``params/`` (Dream-VL),
  ``heads/`` + ``assets/heads.json`` (action head / projectors), ``assets/`` tokenizer files,
  ``dataset_statistics.json`` and, when written by dreamjax, ``vla.json`` (objective, chunk, layout);
* a step of a training run (``WORKDIR/checkpoints/<step>``, ``dreamjax.train.loop``): the heads are inside the
  params tree, LoRA adapters are merged with the run's ``train.lora``;
* a reference fine-tuned directory (spec §6.9): HF ``config.json`` + safetensors + tokenizer files +
  ``dataset_statistics.json`` + ``{action_head,noisy_action_projector,proprio_projector}--…_checkpoint.pt``.

The objective comes from (first found): the ``objective`` argument, ``vla.json``, the action head's kind
(``l1`` / ``ddim`` / ``flow``). A checkpoint without an action head needs ``objective="discrete_diffusion"`` or
``"discrete"`` (the reference's eval picks it with flags too). Sizes: the action dim and proprio dim come from
the head files; the chunk (8), image count (2) and image side (224) default to the LIBERO recipe.

``predict_action(images, instruction, proprio=None, unnorm_key=None, rng=None)`` lays the prompt out with
``dreamjax.data.vla_layout`` (the training layout, actions absent) and runs the compiled predictor of the
objective (``dreamjax.vla.objectives.predict_normalized``, the same function as offline evaluation: one
``jax.jit`` per objective, the discrete objectives scoring their action slots over the action ids only; the
canvas length is rounded up to a multiple of ``CANVAS_BUCKET`` = 8 tokens, so instructions of similar length
share one compilation while the decoder runs on at most 7 padding tokens), then un-normalizes with
``dataset_statistics.json`` (``dreamjax.data.normalization``). The params live on the device: a policy built
from numpy arrays copies them there once (``params`` setter) instead of at every call; the layout of an
instruction is remembered and uint8 images of the layout's size skip PIL. Differences from the
reference's wrapper, on purpose: images of another size than the layout's are resized here (PIL Lanczos; the
reference's eval script resizes before calling); ``proprio`` is given raw and normalized here with the same
statistics (the reference's caller normalizes it); without statistics, actions are returned normalized and
``proprio`` is taken as normalized.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dreamjax import checkpoint, sharding
from dreamjax.data.vla_layout import VLALayout, collate, layout_sample, prompt_ids
from dreamjax.models.config import DreamVLConfig
from dreamjax.data.action_tokenizer import ActionTokenizer
from dreamjax.vla.model import HEAD_COMPONENTS, NOISY, OBJECTIVES, DreamVLAModel, VLAHeadConfig
from dreamjax.vla.objectives import ObjectiveSettings, predict_normalized

VLA_JSON, STATS_JSON = "vla.json", "dataset_statistics.json"
CANVAS_BUCKET = 8  # 32 padded the small benchmark's 229-token prompt to 256: 12 % more decoder work
LAYOUT_CACHE_SIZE = 256  # instructions whose layout (a tokenization) is remembered
LIBERO_DEFAULTS = dict(chunk=8, num_images=2, image_size=224)


class DreamVLA:
    """A Dream-VLA policy: Dream-VL params + heads (one ``{"params": …}`` tree), tokenizer, statistics."""

    def __init__(self, config: DreamVLConfig, head: VLAHeadConfig, params: Any, tokenizer, *,
                 settings: ObjectiveSettings | None = None, num_images: int = 2, image_size: int = 224,
                 norm_stats: dict | None = None, normalization: str = "bounds_q99", lowercase_instruction: bool = True,
                 mesh=None, rules=sharding.DEFAULT_RULES):
        self.mesh, self.rules = mesh, rules
        self.config, self.head, self.params, self.tokenizer = config, head, params, tokenizer
        if tokenizer is None:
            raise ValueError("DreamVLA needs a tokenizer (tokenizer files beside the weights) to lay out prompts")
        self.action_tokenizer = ActionTokenizer.from_tokenizer(tokenizer)
        if settings is None:
            settings = ObjectiveSettings(mask_token_id=config.mask_token_id, vocab_len=len(tokenizer))
        if settings.vocab_len != len(tokenizer):
            raise ValueError(f"objective settings assume a tokenizer of {settings.vocab_len} tokens, the tokenizer "
                             f"has {len(tokenizer)}")
        self.settings = settings
        self.num_images, self.image_size = num_images, image_size
        self.norm_stats, self.normalization = norm_stats, normalization
        self.lowercase_instruction = lowercase_instruction
        self.module = DreamVLAModel(config, head)
        self._layouts: dict[tuple[str, VLALayout], VLALayout] = {}

    @property
    def params(self) -> Any:
        """``{"params": …}`` of Dream-VL + heads: device arrays (with a mesh: as given; from_pretrained shards)."""
        return self._params

    @params.setter
    def params(self, params: Any) -> None:
        """numpy leaves go to the default device once (jit would otherwise copy every leaf at every call:
        ~45 ms of a small-config chunk); jax arrays, sharded ones included, are kept as they are."""
        if self.mesh is None:
            params = jax.tree_util.tree_map(lambda a: a if isinstance(a, jax.Array) else jax.device_put(a), params)
        self._params = params

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, objective: str | None = None, dtype: str = "float32",
                        chunk: int | None = None, num_images: int | None = None, image_size: int | None = None,
                        use_proprio: bool | None = None, steps: int | None = None, mesh=None, rules=None) -> "DreamVLA":
        """Load a policy (module docstring). ``steps``: inference steps of the objective (flow K, DDIM N,
        discrete-diffusion steps; default as stored, else 4 / 50 / 1). ``dtype``: params and compute."""
        from dreamjax.pretrained import DreamVL

        path = Path(path)
        if _is_train_step(path):  # a step of dreamjax.train.loop: heads (and LoRA) inside the params tree
            if mesh is not None:
                raise ValueError(f"{path}: loading a training step onto a mesh is not supported; export it first")
            (vlm, heads), kinds, assets = _load_train_step(path, dtype), {}, path / checkpoint.ASSETS_DIR
        elif checkpoint.is_checkpoint(path) or (path.is_dir() and not (path / "config.json").exists()):
            vlm = DreamVL.from_pretrained(path, dtype=dtype, mesh=mesh, rules=rules)
            assets = checkpoint.assets_dir(path)
            heads, info = checkpoint.load_heads(path)
            kinds = {c: i.get("kind") for c, i in info.items()}
        else:
            vlm = DreamVL.from_pretrained(path, dtype=dtype, mesh=mesh, rules=rules)
            assets = path
            heads, kinds = _read_head_files(path, vlm.config.hidden_size)
        stored = json.loads((assets / VLA_JSON).read_text()) if (assets / VLA_JSON).is_file() else {}
        stats = json.loads((assets / STATS_JSON).read_text()) if (assets / STATS_JSON).is_file() else None
        objective = objective or stored.get("objective") or _objective_of(kinds.get("action_head"), path)
        if kinds.get("action_head") and objective in NOISY + ("l1",) and kinds["action_head"] != objective:
            raise ValueError(f"{path}: objective {objective!r} but the action head file is a {kinds['action_head']!r} "
                             "head")
        head = _head_config(objective, heads, stored, chunk, use_proprio, path)
        settings = _settings(stored, objective, steps, vlm)
        params = {"params": dict(vlm.params["params"])}
        for component in HEAD_COMPONENTS:
            if component in heads and _needs(component, head):
                params["params"][component] = jax.tree_util.tree_map(
                    lambda a: jax.numpy.asarray(np.asarray(a), dtype=dtype), heads[component])
        _check_heads(params, vlm.config, head, path)
        return cls(vlm.config, head, params, vlm.tokenizer, settings=settings,
                   num_images=int(num_images or stored.get("num_images", LIBERO_DEFAULTS["num_images"])),
                   image_size=int(image_size or stored.get("image_size", LIBERO_DEFAULTS["image_size"])),
                   norm_stats=stats, normalization=stored.get("normalization", "bounds_q99"),
                   lowercase_instruction=bool(stored.get("lowercase_instruction", True)), mesh=vlm.mesh,
                   rules=vlm.rules)

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """A dreamjax checkpoint: Dream-VL params, heads (exportable to the reference's head files by
        ``dreamjax export``), tokenizer, statistics and ``vla.json``."""
        from conversion.heads import head_file_name

        tree = jax.device_get(self.params["params"])
        vlm = {k: v for k, v in tree.items() if k not in HEAD_COMPONENTS}
        heads = {k: v for k, v in tree.items() if k in HEAD_COMPONENTS}
        info = {c: {"kind": self.head.objective if c == "action_head" else None, "file": head_file_name(c),
                    "ddp_prefix": True} for c in heads}
        assets = {VLA_JSON: json.dumps(self.vla_dict(), indent=2).encode(),
                  checkpoint.HEADS_FILE: json.dumps(info, indent=2).encode()}
        if self.norm_stats is not None:
            assets[STATS_JSON] = json.dumps(self.norm_stats, indent=2).encode()
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save(tmp)
            assets.update({p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()})
        with checkpoint.ParamsWriter(path, overwrite=overwrite) as w:
            w.write_all({"params": vlm})
            if heads:
                w.write_heads(heads)
            return w.finish(self.config.replace(model_type="dream-vla").to_hf_dict(), assets)

    def vla_dict(self) -> dict:
        h, s = self.head, self.settings
        return dict(objective=h.objective, chunk=h.chunk, action_dim=h.action_dim, proprio_dim=h.proprio_dim,
                    use_proprio=h.use_proprio, num_blocks=h.num_blocks, num_images=self.num_images,
                    image_size=self.image_size, n_action_bins=s.n_bins, tokenizer_len=s.vocab_len,
                    flow_steps=s.flow_steps, ddim_train_steps=s.ddim_train_steps,
                    ddim_inference_steps=s.ddim_inference_steps, discrete_steps=s.discrete_steps,
                    reweighting=s.reweighting, cart_q=s.cart_q, normalization=self.normalization,
                    lowercase_instruction=self.lowercase_instruction)

    # ------------------------------------------------------------------ inference
    def layout_for(self, instruction: str) -> VLALayout:
        """The layout of one prompt; the canvas is the needed length rounded up to a multiple of ``CANVAS_BUCKET``
        (remembered per instruction: a rollout asks for the same one at every step)."""
        base = VLALayout(canvas_length=1, num_images=self.num_images, image_size=self.image_size,
                         chunk=self.head.chunk, action_dim=self.head.action_dim, proprio_dim=self.head.proprio_dim,
                         proprio_token=self.head.use_proprio, timestep_token=self.head.timestep_token,
                         n_action_bins=self.settings.n_bins, lowercase_instruction=self.lowercase_instruction)
        key = (instruction, base)
        if isinstance(instruction, str) and key in self._layouts:
            return self._layouts[key]
        need = base.num_prefix + len(prompt_ids(instruction, self.tokenizer, base)) + base.num_targets  # checks str
        layout = dataclasses.replace(base, canvas_length=int(math.ceil(need / CANVAS_BUCKET) * CANVAS_BUCKET))
        if len(self._layouts) >= LAYOUT_CACHE_SIZE:
            self._layouts.clear()
        self._layouts[key] = layout
        return layout

    def stats_for(self, unnorm_key: str | None) -> dict | None:
        """The statistics entry to un-normalize with (None: no statistics → normalized actions)."""
        if self.norm_stats is None:
            if unnorm_key is not None:
                raise ValueError(f"unnorm_key={unnorm_key!r} given, but this policy has no dataset_statistics.json")
            return None
        keys = sorted(self.norm_stats)
        if unnorm_key is None:
            if len(keys) != 1:
                raise ValueError(f"the policy has statistics of {len(keys)} datasets {keys}: pass unnorm_key")
            unnorm_key = keys[0]
        if unnorm_key not in self.norm_stats:
            raise KeyError(f"unnorm_key={unnorm_key!r} not in dataset_statistics.json (keys: {keys})")
        return self.norm_stats[unnorm_key]

    def _images(self, images) -> np.ndarray:
        from PIL import Image

        items = list(images) if isinstance(images, (list, tuple)) else list(np.asarray(images)) \
            if np.ndim(images) == 4 else [images]
        if len(items) != self.num_images:
            raise ValueError(f"predict_action: got {len(items)} image(s), the policy takes {self.num_images} "
                             "(primary[, wrist])")
        out, side = [], self.image_size
        for i, im in enumerate(items):
            if isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.shape == (side, side, 3):
                out.append(im)  # already what the layout takes (the PIL round trip below would return it as is)
                continue
            pil = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8))
            pil = pil.convert("RGB")
            if pil.size != (self.image_size, self.image_size):
                pil = pil.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
            out.append(np.asarray(pil, np.uint8))
        return np.stack(out)

    def _proprio(self, proprio, stats) -> np.ndarray:
        from dreamjax.data.normalization import normalize

        h = self.head
        if not h.use_proprio:
            return np.zeros(h.proprio_dim, np.float32)
        if proprio is None:
            raise ValueError(f"this policy uses proprio: pass proprio (a vector of {h.proprio_dim} values)")
        p = np.asarray(proprio, np.float32).reshape(-1)
        if p.shape != (h.proprio_dim,):
            raise ValueError(f"proprio must have {h.proprio_dim} values, got shape {np.shape(proprio)}")
        if stats is None:
            return p
        if "proprio" not in stats:
            raise KeyError("dataset_statistics entry has no 'proprio' statistics to normalize proprio with")
        return normalize(p, stats["proprio"], self.normalization)

    def predict_action(self, images, instruction: str, proprio=None, unnorm_key: str | None = None, rng=None,
                       *, return_normalized: bool = False) -> np.ndarray:
        """The action chunk [chunk, action_dim] (numpy float32), un-normalized with ``unnorm_key``'s statistics.

        images: [num_images, H, W, 3] uint8 (primary, then wrist) or a list of arrays / PIL images. rng: a jax
        key or int seed (DDIM and flow draw their initial noise from it; default seed 0).
        """
        from dreamjax.data.normalization import unnormalize

        stats = self.stats_for(unnorm_key)
        frame = dict(images=self._images(images), instruction=instruction, proprio=self._proprio(proprio, stats))
        batch = collate([layout_sample(frame, self.tokenizer, self.layout_for(instruction))])
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = _seed_key(0 if rng is None else int(rng))
        if self.mesh is None:
            out = predict_normalized(self.params, batch, rng, model=self.module, settings=self.settings)
        else:
            with sharding.activation_sharding(self.mesh, self.rules):
                out = predict_normalized(self.params, batch, rng, model=self.module, settings=self.settings)
        actions = np.asarray(out, np.float32)[0]  # one transfer; indexing on the device would dispatch an op
        if return_normalized or stats is None:
            return actions
        return unnormalize(actions, stats["action"], self.normalization)


# ---------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> jax.Array:
    """The jax key of an int seed, made once (keys are immutable; making one costs a dispatch per call)."""
    return jax.random.key(seed)


TRAIN_CONFIG = "train_config.json"  # written by dreamjax.train.checkpoints beside each step


def _is_train_step(path: Path) -> bool:
    """A step of ``dreamjax.train.loop`` (``WORKDIR/checkpoints/<step>``: params/, assets/train_config.json and,
    for a VLA run, assets/vla.json); its params tree holds the heads (and the LoRA adapters)."""
    assets = path / checkpoint.ASSETS_DIR
    return (path / checkpoint.PARAMS_DIR).is_dir() and (assets / TRAIN_CONFIG).is_file() and \
        (assets / VLA_JSON).is_file()


def _load_train_step(path: Path, dtype: str):
    """(DreamVL with the merged weights, {component: params}) of a training step; LoRA adapters are folded in
    with the run's ``train.lora`` (assets/train_config.json)."""
    from dreamjax.models import lora
    from dreamjax.pretrained import DreamVL, _load_tokenizer

    import orbax.checkpoint as ocp

    assets = path / checkpoint.ASSETS_DIR
    directory = (path / checkpoint.PARAMS_DIR).absolute()
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(directory)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", getattr(meta, "item_metadata", meta))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # the run's mesh need not exist here
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    stored = jax.device_get(ckptr.restore(directory, target))
    scanned = "layers" in stored["params"].get("model", {})
    config = DreamVLConfig.from_hf_dict(json.loads((assets / "config.json").read_text()), dtype=dtype,
                                        param_dtype=dtype, scan_layers=scanned)
    if "lora" in stored:
        run = json.loads((assets / TRAIN_CONFIG).read_text())
        spec = run.get("train", {}).get("lora") or {}
        kw = {k: tuple(spec[k]) for k in ("include", "exclude") if spec.get(k)}
        cfg = lora.LoraConfig(rank=int(spec["rank"]), alpha=float(spec.get("alpha", min(int(spec["rank"]), 16))), **kw)
        stored = lora.merge({"params": stored["params"]}, stored["lora"], cfg)
    tree = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(np.asarray(a), dtype=dtype), dict(stored["params"]))
    heads = {c: tree.pop(c) for c in HEAD_COMPONENTS if c in tree}
    return DreamVL(config, {"params": tree}, _load_tokenizer(assets)), heads


def _read_head_files(path: Path, hidden_size: int) -> tuple[dict, dict]:
    """Reference head files in an HF directory → ({component: params}, {component: kind})."""
    from conversion import heads as head_io

    heads, kinds = {}, {}
    for component in head_io.COMPONENTS:
        if head_io.head_files(path, component):
            heads[component], kinds[component] = head_io.load_head(path, component, hidden_size=hidden_size)
    return heads, kinds


def _objective_of(kind: str | None, path) -> str:
    if kind in ("l1", "ddim", "flow"):
        return kind
    raise ValueError(f"{path}: no action head file and no vla.json: pass objective= one of {OBJECTIVES} "
                     "(a checkpoint without an action head is 'discrete_diffusion' or 'discrete')")


def _needs(component: str, head: VLAHeadConfig) -> bool:
    return {"action_head": head.objective in ("l1", "ddim", "flow"), "noisy_action_projector": head.timestep_token,
            "proprio_projector": head.use_proprio}[component]


def _head_config(objective, heads, stored, chunk, use_proprio, path) -> VLAHeadConfig:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}; expected one of {OBJECTIVES}")
    if use_proprio is None:
        use_proprio = bool(stored.get("use_proprio", "proprio_projector" in heads))
    if use_proprio and "proprio_projector" not in heads:
        raise ValueError(f"{path}: use_proprio but there is no proprio_projector checkpoint file")
    action_dim = int(stored.get("action_dim", 7))
    if "action_head" in heads:
        root = next(iter(heads["action_head"].values()))
        fc2 = root["mlp_resnet"]["fc2"] if "mlp_resnet" in root else root["fc2"]
        action_dim = int(np.shape(fc2["kernel"])[-1])
    proprio_dim = int(stored.get("proprio_dim", 8))
    if "proprio_projector" in heads:
        proprio_dim = int(np.shape(heads["proprio_projector"]["fc1"]["kernel"])[0])
    return VLAHeadConfig(objective=objective, chunk=int(chunk or stored.get("chunk", LIBERO_DEFAULTS["chunk"])),
                         action_dim=action_dim, proprio_dim=proprio_dim, use_proprio=use_proprio,
                         num_blocks=int(stored.get("num_blocks", 2)))


def _settings(stored: dict, objective: str, steps, vlm) -> ObjectiveSettings:
    if vlm.tokenizer is None:
        raise ValueError("the checkpoint has no tokenizer files: a Dream-VLA policy needs its tokenizer")
    kw = dict(flow_steps=int(stored.get("flow_steps", 4)), ddim_train_steps=int(stored.get("ddim_train_steps", 50)),
              ddim_inference_steps=int(stored.get("ddim_inference_steps", 50)),
              discrete_steps=int(stored.get("discrete_steps", 1)), reweighting=stored.get("reweighting", "cart"),
              cart_q=float(stored.get("cart_q", 0.1)))
    if steps is not None:
        key = {"flow": "flow_steps", "ddim": "ddim_inference_steps", "discrete_diffusion": "discrete_steps"}.get(objective)
        if key is None:
            raise ValueError(f"steps= applies to flow / ddim / discrete_diffusion, not {objective!r} (one forward)")
        kw[key] = int(steps)
    return ObjectiveSettings(mask_token_id=vlm.config.mask_token_id, vocab_len=len(vlm.tokenizer),
                             n_bins=int(stored.get("n_action_bins", 256)), **kw)


def _check_heads(params, config, head: VLAHeadConfig, path) -> None:
    """Every head the objective needs is there with the shapes the model expects."""
    from dreamjax.vla.model import dummy_inputs

    want = jax.eval_shape(DreamVLAModel(config, head).init, jax.random.key(0), *dummy_inputs(config, head))
    want = {k: v for k, v in nn.unbox(want)["params"].items() if k in HEAD_COMPONENTS}
    for component, tree in want.items():
        if component not in params["params"]:
            raise ValueError(f"{path}: the {head.objective!r} objective needs a {component} checkpoint file; none found")
        got = jax.tree_util.tree_map(np.shape, params["params"][component])
        exp = jax.tree_util.tree_map(lambda s: tuple(s.shape), tree)
        if got != exp:
            raise ValueError(f"{path}: {component} params do not fit the model (got {got}, expected {exp})")
