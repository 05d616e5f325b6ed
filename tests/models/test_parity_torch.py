"""Parity with PyTorch: transformers' Qwen2-VL (bidirectional) loaded into dreamjax, fp32.

Tolerance: max |jax − torch| / max |torch| ≤ 1e-5 for vision features and for logits at valid positions.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

from conversion.keymap import hf_to_params  # noqa: E402
from dreamjax.models.config import DreamVLConfig  # noqa: E402
from dreamjax.models.dream_vl import DreamVLModel  # noqa: E402
from dreamjax.models.positions import (
    get_rope_index, pack_pixel_rows, text_position_ids, vision_patch_layout, vision_patch_rows)  # noqa: E402
from tests.tiny import hf_qwen2vl_config_dict, randomize_torch_, rel_err, tiny_config  # noqa: E402

TOL = 1e-5
# Three images of different sizes; the third has 2 temporal slices (attention stays inside each slice).
GRIDS = np.array([[1, 6, 4], [1, 4, 8], [2, 4, 4]])


@pytest.fixture(scope="module")
def hf_model():
    c = tiny_config()
    cfg = transformers.Qwen2VLConfig(**hf_qwen2vl_config_dict(c))
    cfg.text_config.is_causal = False  # Dream: bidirectional attention
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    randomize_torch_(model, seed=1)
    return model


@pytest.fixture(scope="module")
def inputs(hf_model):
    c = tiny_config()
    rng = np.random.default_rng(0)
    n_tok = [int(np.prod(g)) // 4 for g in GRIDS]
    img = c.image_token_id
    text = lambda n: list(rng.integers(20, c.vocab_size, n))  # noqa: E731
    row0 = text(5) + [img] * n_tok[0] + text(3) + [img] * n_tok[1] + text(4)
    row1 = text(3) + [img] * n_tok[2] + text(6)
    s = max(len(row0), len(row1)) + 3
    ids = np.full((2, s), c.pad_token_id, np.int64)
    mask = np.zeros((2, s), np.int64)
    for i, r in enumerate((row0, row1)):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    assert mask[1].sum() < s  # row 1 is right-padded
    pixel_values = rng.standard_normal((int(np.prod(GRIDS, axis=1).sum()), 1176)).astype(np.float32)
    return ids, mask, pixel_values


def _jax_params(hf_model, config):
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    return hf_to_params(sd, sd.keys(), config, source="torch state_dict")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_vision_features_and_logits_match_torch(hf_model, inputs, scan_layers):
    ids, mask, pv = inputs
    config = DreamVLConfig.from_hf_dict(hf_model.config.to_dict(), scan_layers=scan_layers)
    assert not config.use_projector and config.vision is not None
    params = _jax_params(hf_model, config)
    model = DreamVLModel(config)
    pp, ps = vision_patch_layout(GRIDS)
    pos = text_position_ids(mask)  # Dream-VL effective positions (no <|vision_start|> in its template)

    with torch.no_grad():
        ref_feats = hf_model.model.visual(torch.from_numpy(pv), grid_thw=torch.from_numpy(GRIDS)).pooler_output
        ref_logits = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              pixel_values=torch.from_numpy(pv), image_grid_thw=torch.from_numpy(GRIDS),
                              position_ids=torch.from_numpy(pos.astype(np.int64))).logits.numpy()

    feats = model.apply({"params": params}, pv, pp, ps, method=DreamVLModel.encode_images)
    assert rel_err(feats, ref_feats.numpy()) <= TOL

    logits = jax.jit(model.apply)({"params": params}, ids, mask, pos, pv, pp, ps)
    logits = np.asarray(logits)
    valid = mask.astype(bool)
    assert rel_err(logits[valid], ref_logits[valid]) <= TOL
    assert np.isfinite(logits).all(), "padded positions must not produce NaN/inf"


def test_mrope_3d_positions_match_torch(hf_model, inputs):
    """With <|vision_start|> before each image, the reference's get_rope_index gives real (t, h, w) M-RoPE
    positions; they equal transformers' and the logits still match."""
    ids, mask, pv = inputs
    c = DreamVLConfig.from_hf_dict(hf_model.config.to_dict())
    ids = ids.copy()
    for b in range(ids.shape[0]):  # turn the text token before each image block into <|vision_start|>
        starts = np.flatnonzero((ids[b, 1:] == c.image_token_id) & (ids[b, :-1] != c.image_token_id))
        ids[b, starts] = c.vision_start_token_id
    pos, deltas = get_rope_index(ids, GRIDS, None, mask, image_token_id=c.image_token_id,
                                 video_token_id=c.video_token_id, vision_start_token_id=c.vision_start_token_id)
    mm_types = torch.from_numpy((ids == c.image_token_id).astype(np.int64))
    ref_pos, ref_deltas = hf_model.model.get_rope_index(
        torch.from_numpy(ids), mm_types, image_grid_thw=torch.from_numpy(GRIDS), attention_mask=torch.from_numpy(mask))
    valid = mask.astype(bool)
    np.testing.assert_array_equal(pos[:, valid], ref_pos.numpy()[:, valid])
    assert not (pos[0] == pos[1]).all(), "image blocks must get distinct (t, h, w) positions"

    params = _jax_params(hf_model, c)
    pp, ps = vision_patch_layout(GRIDS)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       pixel_values=torch.from_numpy(pv), image_grid_thw=torch.from_numpy(GRIDS),
                       position_ids=torch.from_numpy(pos.astype(np.int64))).logits.numpy()
    logits = np.asarray(DreamVLModel(c).apply({"params": params}, ids, mask, pos, pv, pp, ps))
    assert rel_err(logits[valid], ref[valid]) <= TOL


@pytest.mark.parametrize("row_len,num_rows", [(None, None), (64, 3), (32, 6)])
def test_row_packed_vision_input_matches_torch(hf_model, inputs, row_len, num_rows):
    """Row-packed ViT input (each image slice attends within its row; several slices may share a row, rows
    may be padding) gives the reference's features and logits."""
    ids, mask, pv = inputs
    config = DreamVLConfig.from_hf_dict(hf_model.config.to_dict())
    params = _jax_params(hf_model, config)
    gather, pp, ps = vision_patch_rows(GRIDS, row_len, num_rows)
    rows = pack_pixel_rows(pv, gather, pp.shape[1])
    with torch.no_grad():
        ref_feats = hf_model.model.visual(torch.from_numpy(pv), grid_thw=torch.from_numpy(GRIDS)).pooler_output.numpy()
    feats = np.asarray(DreamVLModel(config).apply({"params": params}, rows, pp, ps,
                                                  method=DreamVLModel.encode_images))
    assert rel_err(feats[: len(ref_feats)], ref_feats) <= TOL

    pos = text_position_ids(mask)
    with torch.no_grad():
        ref_logits = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              pixel_values=torch.from_numpy(pv), image_grid_thw=torch.from_numpy(GRIDS),
                              position_ids=torch.from_numpy(pos.astype(np.int64))).logits.numpy()
    logits = np.asarray(DreamVLModel(config).apply({"params": params}, ids, mask, pos, rows, pp, ps))
    valid = mask.astype(bool)
    assert rel_err(logits[valid], ref_logits[valid]) <= TOL


def test_row_packing_errors():
    with pytest.raises(ValueError, match="hold the largest image slice"):
        vision_patch_rows(GRIDS, row_len=16)
    with pytest.raises(ValueError, match="row budget is 2"):
        vision_patch_rows(GRIDS, row_len=32, num_rows=2)
