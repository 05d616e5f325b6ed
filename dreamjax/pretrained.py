"""The public model API: ``dreamjax.DreamVL`` (DESIGN.md "Public Python API").

``DreamVL.from_pretrained(path)`` reads an HF snapshot directory (config.json + safetensors, optional
tokenizer files; Dream-VL, transformers-5 Qwen2-VL naming, or a text-only Dream checkpoint) or a dreamjax
checkpoint directory, optionally straight onto a device mesh. Calling the object runs the forward pass
on numpy/jax inputs shaped like the reference's (``input_ids``, ``attention_mask``, ``pixel_values``,
``image_grid_thw``); host-side layout (positions, patch layout) and input checks happen here, the
compiled model sees only static shapes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from tqdm import tqdm

from conversion.keymap import hf_to_params, params_to_hf
from conversion.safetensors_io import SafetensorsDir
from dreamjax import checkpoint, sharding
from dreamjax.models.config import DreamVLConfig
from dreamjax.models.dream_vl import DreamVLModel
from dreamjax.models.positions import get_rope_index, pack_pixel_rows, vision_patch_layout, vision_patch_rows


def _load_tokenizer(directory: Path):
    if not any((directory / f).exists() for f in ("tokenizer.json", "vocab.json", "spm.model")):
        return None
    from dreamjax.data.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(directory)


class DreamVL:
    """A Dream-VL model: config, params (``{"params": …}``), the Flax module, optional tokenizer and mesh."""

    def __init__(self, config: DreamVLConfig, params: Any, tokenizer=None, mesh=None, rules=sharding.DEFAULT_RULES):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.rules = rules
        self.module = DreamVLModel(config)
        self._forward = jax.jit(self.module.apply)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: DreamVLConfig, seed: int = 0, tokenizer=None) -> "DreamVL":
        """A randomly initialized model (reference init, spec §1.10)."""
        module = DreamVLModel(config)
        inputs = _dummy_inputs(config)
        variables = jax.jit(lambda key: nn.unbox(module.init(key, *inputs)))(jax.random.key(seed))  # one compile,
        return cls(config, variables, tokenizer)  # not thousands of eager ops (7B-shaped configs: minutes → seconds)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str = "float32", *, mesh=None, rules=None,
                        scan_layers: bool | None = None, attention_impl: str = "xla",
                        merge_lora: bool = True) -> "DreamVL":
        """Load an HF snapshot dir or a dreamjax checkpoint.

        dtype: param and compute dtype ("float32", or "bfloat16" for inference). mesh: place params with
        the rule table's shardings (``sharding.make_mesh``); default: the default device. scan_layers:
        None = as a dreamjax checkpoint stores them (unrolled for HF snapshots); a different choice
        restacks the layers on the host. merge_lora: a checkpoint converted with ``--keep-lora`` keeps its
        peft adapters as LoRA params; they are merged into the loaded weights (False: the bare base).
        """
        path = Path(path)
        rules = sharding.rules_from_config(rules)
        runtime = dict(dtype=dtype, param_dtype=dtype, attention_impl=attention_impl)
        if checkpoint.is_checkpoint(path) or (path.is_dir() and not (path / "config.json").exists()):
            hf_config = checkpoint.load_config(path)
            stored_scan = checkpoint.stored_scanned(path)
            config = DreamVLConfig.from_hf_dict(hf_config, scan_layers=stored_scan if scan_layers is None
                                                else scan_layers, **runtime)
            if config.scan_layers == stored_scan:
                params = checkpoint.load_params(path, _abstract_params(config, mesh, rules))
            else:  # restack: stored layout → HF tensors → the requested layout, one param at a time
                stored_cfg = config.replace(scan_layers=stored_scan)
                host = jax.device_get(checkpoint.load_params(path, _abstract_params(stored_cfg, None, rules))["params"])
                tensors = dict(params_to_hf(host, stored_cfg))
                params = _place(hf_to_params(tensors, tensors.keys(), config, source=str(path)), config, mesh,
                                rules, path)
            from conversion.lora_checkpoint import merge_kept_lora  # `convert --keep-lora`: adapters merged here

            if merge_lora:
                params = merge_kept_lora(path, params, config)
            tok_dir = checkpoint.assets_dir(path)
        elif (path / "config.json").is_file():
            import json

            config = DreamVLConfig.from_hf_dict(json.loads((path / "config.json").read_text()),
                                                scan_layers=bool(scan_layers), **runtime)
            st = SafetensorsDir(path)
            with tqdm(total=len(st.keys()), desc=f"reading {path.name}", unit="tensor",
                      disable=not sys.stderr.isatty()) as bar:
                def read(key):
                    bar.update()
                    return st.get(key)

                host = hf_to_params(read, st.keys(), config, source=str(path))
            params = _place(host, config, mesh, rules, path)
            tok_dir = path
        else:
            raise FileNotFoundError(f"{path}: neither an HF snapshot (config.json + *.safetensors) nor a dreamjax "
                                    "checkpoint")
        return cls(config, params, _load_tokenizer(tok_dir), mesh, rules)

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a dreamjax checkpoint (params + assets/config.json + tokenizer files)."""
        assets = {}
        if self.tokenizer is not None:
            import tempfile

            tmp = Path(tempfile.mkdtemp())
            self.tokenizer.save(tmp)
            assets = {f.name: f.read_bytes() for f in tmp.iterdir() if f.is_file()}
        return checkpoint.save(path, self.params, self.config.to_hf_dict(), assets, overwrite=overwrite)

    def hf_state_dict(self):
        """(HF name, numpy tensor) pairs in the Dream-VL layout, one at a time."""
        return params_to_hf(jax.device_get(self.params["params"]), self.config)

    # ------------------------------------------------------------------ forward
    def prepare_inputs(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> dict:
        """Host-side checks and layout: the keyword arguments ``DreamVLModel.__call__`` takes."""
        c = self.config
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
        mask = np.ones_like(ids, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"input_ids contain ids outside [0, {c.vocab_size}) (min {ids.min()}, max {ids.max()})")
        n_img_tokens = int((ids == c.image_token_id).sum())
        out: dict[str, Any] = dict(input_ids=ids.astype(np.int32), attention_mask=mask)
        if pixel_values is not None:
            if c.vision is None:
                raise ValueError("pixel_values given, but this checkpoint has no vision tower (text-only)")
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
            pv = np.asarray(pixel_values)
            if pv.shape != (int(grid.prod(-1).sum()), c.vision.patch_dim):
                raise ValueError(f"pixel_values shape {pv.shape} does not match image_grid_thw {grid.tolist()}: "
                                 f"expected ({int(grid.prod(-1).sum())}, {c.vision.patch_dim})")
            m2 = c.vision.spatial_merge_size**2
            n_feats = int(grid.prod(-1).sum()) // m2
            if n_feats != n_img_tokens:
                raise ValueError(f"Image features and image tokens do not match: {n_img_tokens} image-pad tokens "
                                 f"(id {c.image_token_id}) in input_ids, {n_feats} image features from "
                                 f"image_grid_thw {grid.tolist()}")
            # Row-packed ViT input: each image slice attends within its own row (see vision_patch_rows).
            gather, pp, ps = vision_patch_rows(grid, spatial_merge_size=c.vision.spatial_merge_size)
            out.update(pixel_values=pack_pixel_rows(pv, gather, ps.shape[1]), patch_positions=pp,
                       patch_segment_ids=ps)
        elif n_img_tokens:
            raise ValueError(f"input_ids contain {n_img_tokens} image-pad tokens but no pixel_values were given")
        else:
            grid = None
        merge = c.vision.spatial_merge_size if c.vision is not None else 2
        out["position_ids"], _ = get_rope_index(
            ids, grid, None, mask, image_token_id=c.image_token_id, video_token_id=c.video_token_id,
            vision_start_token_id=c.vision_start_token_id, spatial_merge_size=merge)
        return out

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> jax.Array:
        """Logits [B, S, V] for every position (logits[b, i] scores token i+1, as the reference)."""
        kw = self.prepare_inputs(input_ids, attention_mask, pixel_values, image_grid_thw)
        if self.mesh is None:
            return self._forward(self.params, **kw)
        with sharding.activation_sharding(self.mesh, self.rules):
            return self._forward(self.params, **kw)

    def generate(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
                 max_new_tokens: int, steps: int, alg: str = "origin", temperature: float = 0.0,
                 top_p: float | None = None, top_k: int | None = None, alg_temp: float | None = None,
                 eos_penalty: float = 0.0, rng=None, eps: float = 1e-3, flat_batch: bool = False,
                 output_history: bool = False):
        """Masked-diffusion generation (the reference's ``diffusion_generate``, spec §5).

        input_ids [B, P] (left-padded with ``attention_mask`` for ragged prompts; position 0 must not be the
        mask token); images as for ``__call__``. Appends ``max_new_tokens`` masks and denoises them in
        ``steps`` full forwards with ``alg`` ∈ {origin, maskgit_plus, topk_margin, entropy}; temperature,
        top_p, top_k, alg_temp, eos_penalty and eps as the reference (``dreamjax.diffusion.sampler``).
        steps > max_new_tokens is allowed (some steps then reveal nothing), as in the reference.
        rng: a ``jax.random`` key or int seed; default ``jax.random.key(0)``. Rows are independent unless
        ``flat_batch=True`` (the HF generator's batch-coupled top-k).

        Returns the full canvas [B, P + max_new_tokens] (prompt included, as the reference) — cut it with
        ``dreamjax.diffusion.cut_at_stop`` — or ``(canvas, history [steps, B, P + max_new_tokens])`` with
        ``output_history=True``.
        """
        from dreamjax.diffusion import sampler

        settings = sampler.SamplerSettings(
            steps=steps, alg=alg, temperature=float(temperature), top_p=top_p, top_k=top_k, alg_temp=alg_temp,
            eos_penalty=float(eos_penalty), eps=float(eps), flat_batch=flat_batch,
            output_history=output_history).validate()
        canvas, canvas_mask = sampler.make_canvas(input_ids, attention_mask, max_new_tokens, self.config.mask_token_id)
        kw = self.prepare_inputs(canvas, canvas_mask, pixel_values, image_grid_thw)
        run = lambda: sampler.diffusion_generate(  # noqa: E731
            self.module, self.params, kw, settings, prompt_length=np.asarray(input_ids).shape[1], rng=rng)
        if self.mesh is None:
            return run()
        with sharding.activation_sharding(self.mesh, self.rules):
            return run()


def _dummy_inputs(config: DreamVLConfig):
    ids = np.zeros((1, 8), np.int32)
    if config.vision is None:
        return (ids,)
    grid = np.array([[1, 2 * config.vision.spatial_merge_size, 2 * config.vision.spatial_merge_size]])
    pp, ps = vision_patch_layout(grid, config.vision.spatial_merge_size)
    pv = np.zeros((len(ps), config.vision.patch_dim), np.float32)
    return ids, None, None, pv, pp, ps


def _abstract_params(config: DreamVLConfig, mesh, rules) -> Any:
    """ShapeDtypeStructs (with shardings) of ``{"params": …}`` for this config, no allocation."""
    abstract = jax.eval_shape(DreamVLModel(config).init, jax.random.key(0), *_dummy_inputs(config))
    if mesh is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: dev, nn.unbox(abstract))
    else:
        shardings = sharding.param_shardings(abstract, mesh, rules)
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  nn.unbox(abstract), shardings)


def _place(host: Any, config: DreamVLConfig, mesh, rules, source) -> dict:
    """Host param tree (numpy) → ``{"params": …}`` on the device(s), cast to the config's param dtype."""
    target = _abstract_params(config, mesh, rules)
    _check_shapes(host, target["params"], source)
    return {"params": jax.tree_util.tree_map(
        lambda a, t: jax.device_put(np.asarray(a).astype(t.dtype), t.sharding), host, target["params"])}


def _check_shapes(host: Any, target: Any, source) -> None:
    flat_t = dict(jax.tree_util.tree_leaves_with_path(target))
    flat_h = dict(jax.tree_util.tree_leaves_with_path(host))
    if flat_t.keys() != flat_h.keys():
        diff = sorted(jax.tree_util.keystr(k) for k in flat_t.keys() ^ flat_h.keys())
        raise ValueError(f"{source}: converted params do not match the model's param tree: {diff[:8]}")
    for kp, arr in flat_h.items():
        want = flat_t[kp].shape
        if tuple(np.shape(arr)) != tuple(want):
            raise ValueError(f"{source}: param {jax.tree_util.keystr(kp)} has shape {tuple(np.shape(arr))} after "
                             f"conversion, but config.json implies {tuple(want)}")
