"""HF snapshot fixtures shared by the loading and conversion tests: a tiny transformers Qwen2-VL
(bidirectional, non-trivial random init), inputs for it, and writers for the HF layouts users arrive with."""

import json

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conversion import safetensors_io  # noqa: E402
from conversion.keymap import to_canonical  # noqa: E402
from dreamjax.models.positions import text_position_ids  # noqa: E402
from tests.tiny import hf_qwen2vl_config_dict, randomize_torch_, tiny_config  # noqa: E402

GRIDS = np.array([[1, 4, 6], [1, 6, 4]])


@pytest.fixture(scope="module")
def hf_model():
    cfg = transformers.Qwen2VLConfig(**hf_qwen2vl_config_dict(tiny_config()))
    cfg.text_config.is_causal = False
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    randomize_torch_(model, seed=3)
    return model


@pytest.fixture(scope="module")
def batch():
    c = tiny_config()
    rng = np.random.default_rng(1)
    row0 = list(rng.integers(20, 300, 4)) + [c.image_token_id] * 6 + list(rng.integers(20, 300, 5))
    row1 = list(rng.integers(20, 300, 2)) + [c.image_token_id] * 6 + list(rng.integers(20, 300, 3))
    ids = np.full((2, len(row0)), c.pad_token_id)
    ids[0], ids[1, :len(row1)] = row0, row1
    mask = (np.arange(len(row0))[None] < np.array([[len(row0)], [len(row1)]])).astype(np.int64)
    pv = rng.standard_normal((int(GRIDS.prod(-1).sum()), 1176)).astype(np.float32)
    return ids, mask, pv


def torch_logits(model, ids, mask, pv=None, grid=None):
    pos = text_position_ids(mask).astype(np.int64)
    kw = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
              position_ids=torch.from_numpy(pos if grid is not None else pos[0]))  # Qwen2 (text) takes [B, S]
    if pv is not None:
        kw.update(pixel_values=torch.from_numpy(pv), image_grid_thw=torch.from_numpy(grid))
    with torch.no_grad():
        return model(**kw).logits.numpy()


def write_hf5_snapshot(hf_model, path):
    """transformers-5 composite names (model.visual.*, model.language_model.*), as its state_dict has them.
    (transformers' own save_pretrained converts back to the legacy visual.* / model.* names.)"""
    path.mkdir()
    safetensors_io.save_file({k: v.detach().numpy() for k, v in hf_model.state_dict().items()},
                             path / "model.safetensors")
    (path / "config.json").write_text(hf_model.config.to_json_string())


def write_dream_vl_snapshot(hf_model, path, rng, dtype=ml_dtypes.bfloat16, shards=2):
    """Dream-VL layout (visual.*, projector.*, model.*, lm_head.*) in ``dtype``, ``shards`` files + index."""
    sd = {to_canonical(k, "hf5"): v.detach().numpy() for k, v in hf_model.state_dict().items()}
    d = hf_model.config.text_config.hidden_size
    for name in ("linear_1", "linear_2"):
        sd[f"projector.{name}.weight"] = 0.1 * rng.standard_normal((d, d)).astype(np.float32)
        sd[f"projector.{name}.bias"] = 0.1 * rng.standard_normal(d).astype(np.float32)
    sd = {k: v.astype(dtype) for k, v in sd.items()}
    path.mkdir()
    names = sorted(sd)
    shards = {f"model-{i + 1:05d}-of-{shards:05d}.safetensors": names[i::shards] for i in range(shards)}
    for fname, keys in shards.items():
        safetensors_io.save_file({k: sd[k] for k in keys}, path / fname)
    weight_map = {k: f for f, ks in shards.items() for k in ks}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    c = tiny_config()
    config = c.to_hf_dict()
    config["model_type"] = "dream-vl"
    (path / "config.json").write_text(json.dumps(config))
    return sd


