"""``dreamjax.DreamVL.from_pretrained``: HF snapshots (transformers-5 Qwen2-VL naming; Dream-VL layout with
the projector, bf16, sharded safetensors; text-only Dream) and dreamjax checkpoints, on one device and on
an 8-device mesh. Tolerance as the model parity test: max |Δ| / max |ref| ≤ 1e-5 (fp32)."""

import json
import math

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import dreamjax  # noqa: E402
from conversion import safetensors_io  # noqa: E402
from conversion.keymap import to_canonical  # noqa: E402
from dreamjax import sharding  # noqa: E402
from dreamjax.models.dream_vl import DreamVLModel  # noqa: E402
from dreamjax.models.positions import vision_patch_layout  # noqa: E402
from tests.hf_fixtures import GRIDS, torch_logits, write_dream_vl_snapshot, write_hf5_snapshot  # noqa: E402
from tests.tiny import randomize_torch_, rel_err, tiny_config  # noqa: E402

TOL = 1e-5


@pytest.mark.parametrize("layout", ["save_pretrained", "hf5_names"])
def test_hf_snapshot_matches_torch_on_one_device_and_on_a_mesh(hf_model, batch, tmp_path, layout):
    if layout == "save_pretrained":
        hf_model.save_pretrained(tmp_path / "hf")
    else:
        write_hf5_snapshot(hf_model, tmp_path / "hf")
        assert "model.language_model.norm.weight" in safetensors_io.SafetensorsDir(tmp_path / "hf").keys()
    ids, mask, pv = batch
    ref = torch_logits(hf_model, ids, mask, pv, GRIDS)
    valid = mask.astype(bool)

    model = dreamjax.DreamVL.from_pretrained(tmp_path / "hf")
    assert model.config.vision is not None and not model.config.use_projector
    logits = np.asarray(model(ids, mask, pv, GRIDS))
    assert rel_err(logits[valid], ref[valid]) <= TOL

    mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4))
    sharded = dreamjax.DreamVL.from_pretrained(tmp_path / "hf", mesh=mesh, scan_layers=True)
    kernel = sharded.params["params"]["model"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and kernel.sharding.spec == P(None, "fsdp", "tensor")
    logits_mesh = np.asarray(sharded(ids, mask, pv, GRIDS))
    assert rel_err(logits_mesh[valid], ref[valid]) <= TOL


def _gelu_np(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def test_dream_vl_layout_bf16_sharded_with_projector(hf_model, batch, tmp_path):
    rng = np.random.default_rng(0)
    sd = write_dream_vl_snapshot(hf_model, tmp_path / "dream", rng)
    model = dreamjax.DreamVL.from_pretrained(tmp_path / "dream")
    assert model.config.use_projector
    assert model.params["params"]["projector"]["linear_1"]["kernel"].dtype == np.float32

    # Vision features = numpy projector(GELU-erf) on top of the torch merger run with the same bf16 weights.
    torch_model = transformers.Qwen2VLForConditionalGeneration(hf_model.config).eval()
    torch_model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in
                                 {kk: sd[to_canonical(kk, "hf5")] for kk in hf_model.state_dict()}.items()})
    _, _, pv = batch
    with torch.no_grad():
        merged = torch_model.model.visual(torch.from_numpy(pv), grid_thw=torch.from_numpy(GRIDS)).pooler_output.numpy()
    w = {k: np.asarray(v, np.float64) for k, v in sd.items() if k.startswith("projector.")}
    h = _gelu_np(merged @ w["projector.linear_1.weight"].T + w["projector.linear_1.bias"])
    expected = h @ w["projector.linear_2.weight"].T + w["projector.linear_2.bias"]
    pp, ps = vision_patch_layout(GRIDS)
    feats = model.module.apply(model.params, pv, pp, ps, method=DreamVLModel.encode_images)
    assert rel_err(feats, expected) <= TOL

    bf16 = dreamjax.DreamVL.from_pretrained(tmp_path / "dream", dtype="bfloat16")
    kernel = bf16.params["params"]["model"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert kernel.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(kernel), sd["model.layers.0.mlp.up_proj.weight"].T)


def test_dreamjax_checkpoint_round_trip_and_mesh_restore(hf_model, batch, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    ids, mask, pv = batch
    model = dreamjax.DreamVL.from_pretrained(tmp_path / "hf")
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="exists"):
        model.save_pretrained(tmp_path / "ckpt")
    assert not list(tmp_path.glob(".ckpt*")), "no temporary directory left behind"

    restored = dreamjax.DreamVL.from_pretrained(tmp_path / "ckpt")
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored.params),
                           jax.device_get(model.params))
    np.testing.assert_array_equal(np.asarray(restored(ids, mask, pv, GRIDS)), np.asarray(model(ids, mask, pv, GRIDS)))

    mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=4))
    on_mesh = dreamjax.DreamVL.from_pretrained(tmp_path / "ckpt", mesh=mesh)
    emb = on_mesh.params["params"]["model"]["embed_tokens"]["embedding"]
    assert emb.sharding.spec == P("tensor", "fsdp")
    out = np.asarray(on_mesh(ids, mask, pv, GRIDS))
    assert rel_err(out[mask.astype(bool)], np.asarray(model(ids, mask, pv, GRIDS))[mask.astype(bool)]) <= TOL


def test_text_only_dream_checkpoint_matches_bidirectional_qwen2(tmp_path):
    c = tiny_config()
    cfg = transformers.Qwen2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                                   intermediate_size=c.intermediate_size, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg.is_causal = False
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    randomize_torch_(model, seed=5)
    model.save_pretrained(tmp_path / "dream")
    config = json.loads((tmp_path / "dream" / "config.json").read_text())
    config.update(model_type="Dream", mask_token_id=3)  # Dream-v0 keeps the Qwen2 key layout
    (tmp_path / "dream" / "config.json").write_text(json.dumps(config))

    dm = dreamjax.DreamVL.from_pretrained(tmp_path / "dream")
    assert dm.config.vision is None and dm.config.mask_token_id == 3
    ids = np.random.default_rng(0).integers(10, c.vocab_size, (2, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    ref = torch_logits(model, ids, mask)
    out = np.asarray(dm(ids, mask))
    assert rel_err(out[mask.astype(bool)], ref[mask.astype(bool)]) <= TOL
    with pytest.raises(ValueError, match="no vision tower"):
        dm(ids, mask, np.zeros((16, 1176), np.float32), np.array([[1, 4, 4]]))


def test_bad_inputs_and_bad_checkpoints_fail_clearly(hf_model, batch, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    ids, mask, pv = batch
    model = dreamjax.DreamVL.from_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="12 image-pad tokens .* 18 image features"):
        model(ids, mask, np.concatenate([pv, pv[:24]]), np.array([[1, 4, 6], [1, 6, 4], [1, 4, 6]]))
    with pytest.raises(ValueError, match="pixel_values shape"):
        model(ids, mask, pv[:-4], GRIDS)
    with pytest.raises(ValueError, match="image-pad tokens but no pixel_values"):
        model(ids, mask)

    # a missing tensor is named
    st = safetensors_io.SafetensorsFile(tmp_path / "hf" / "model.safetensors")
    tensors = {k: st.get(k) for k in st.keys() if k != "model.layers.1.mlp.up_proj.weight"}
    broken = tmp_path / "missing"
    broken.mkdir()
    (broken / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    safetensors_io.save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ValueError, match="missing model.layers.1.mlp.up_proj.weight"):
        dreamjax.DreamVL.from_pretrained(broken)

    # a truncated file is named
    data = (tmp_path / "hf" / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="model.safetensors: truncated"):
        dreamjax.DreamVL.from_pretrained(broken)

    with pytest.raises(FileNotFoundError, match="neither an HF snapshot"):
        dreamjax.DreamVL.from_pretrained(tmp_path / "nothing_here")
