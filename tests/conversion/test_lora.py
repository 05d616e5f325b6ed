"""peft LoRA adapter dirs (as Dream-VLA's ``lora_adapter/``) merged into base tensors.

Reference for the arithmetic: peft's merge as Dream-VLA runs it (CPU, bf16 base, fp32 adapter weights):
``W.data += (B @ A) * scaling`` in torch. With dyadic test values (B@A exact in any summation order) the
merged tensors are byte-identical; with random values fp32 agrees to 1e-6 relative and bf16 to 1 ulp.
"""

import json
import math

import ml_dtypes
import numpy as np
import pytest

from conversion import lora
from conversion.heads import numpy_to_tensor, tensor_to_numpy
from conversion.keymap import from_canonical
from conversion.safetensors_io import save_file

torch = pytest.importorskip("torch")

# module path (Dream layout) → (out, in)
MODULES = {
    "model.layers.0.self_attn.q_proj": (24, 16),
    "model.layers.1.mlp.down_proj": (16, 40),
    "visual.blocks.0.attn.qkv": (36, 12),
    "visual.merger.mlp.0": (20, 20),
    "projector.linear_1": (16, 16),
}
OTHER = {"model.layers.0.self_attn.q_proj.bias": (24,), "model.norm.weight": (16,), "lm_head.weight": (50, 16),
         "model.embed_tokens.weight": (50, 16)}


def dyadic(rng, shape, denom=64):
    return (rng.integers(-8, 9, shape) / denom).astype(np.float32)


def write_adapter(tmp_path, r=32, alpha=16, fmt="safetensors", layout="dream", modules=MODULES, values=dyadic,
                  dtype=np.float32, **extra_cfg):
    rng = np.random.default_rng(0)
    d = tmp_path / "lora_adapter"
    d.mkdir(exist_ok=True)
    tensors = {}
    for m, (out, inp) in modules.items():
        name = from_canonical(m, layout)
        tensors[f"base_model.model.{name}.lora_A.weight"] = values(rng, (r, inp)).astype(dtype)
        tensors[f"base_model.model.{name}.lora_B.weight"] = values(rng, (out, r)).astype(dtype)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
           "init_lora_weights": "gaussian", "target_modules": ["q_proj", "down_proj", "qkv", "0", "linear_1"],
           "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "task_type": None,
           **extra_cfg}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        save_file(tensors, d / "adapter_model.safetensors")
    else:
        torch.save({k: numpy_to_tensor(v) for k, v in tensors.items()}, d / "adapter_model.bin")
    return d, tensors


def base_tensors(dtype, layout="dream", values=dyadic):
    rng = np.random.default_rng(1)
    shapes = {f"{m}.weight": s for m, s in MODULES.items()} | OTHER
    return {from_canonical(k, layout): values(rng, s, 8).astype(dtype) for k, s in shapes.items()}


def peft_merge(w, a, b, scaling):
    """What peft's Linear.merge does to the base weight (torch, CPU, fp32 adapter)."""
    wt = numpy_to_tensor(w)
    delta = numpy_to_tensor(b).float() @ numpy_to_tensor(a).float()
    wt.data += delta * scaling
    return tensor_to_numpy(wt)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_merge_equals_peft_arithmetic_bytewise(tmp_path, fmt, dtype):
    d, _ = write_adapter(tmp_path, fmt=fmt)
    adapter = lora.load_adapter(tmp_path)  # the checkpoint dir: lora_adapter/ is found inside
    assert adapter.path == d and adapter.scaling == 0.5  # Dream-VLA: r 32, α 16
    base = base_tensors(dtype)
    get = lora.merge_lora(base.__getitem__, base.keys(), adapter)
    assert get.merged == sorted(f"{m}.weight" for m in MODULES)
    for name, w in base.items():
        out = get(name)
        assert out.dtype == w.dtype and out.shape == w.shape
        module = name[:-len(".weight")]
        if module in adapter.modules:
            a, b = adapter.modules[module]
            assert out.tobytes() == peft_merge(w, a, b, 0.5).tobytes(), name
            assert not np.array_equal(out, w)
        else:
            assert out.tobytes() == w.tobytes(), name  # untouched


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_merge_random_values_and_scaling(tmp_path, dtype):
    normal = lambda rng, shape, denom=1: (rng.standard_normal(shape) / denom).astype(np.float32)
    write_adapter(tmp_path, r=4, alpha=8, values=normal)
    adapter = lora.load_adapter(tmp_path / "lora_adapter")
    assert adapter.scaling == 2.0
    base = base_tensors(dtype, values=normal)
    get = lora.merge_lora(base.__getitem__, base.keys(), adapter)
    for module, (a, b) in adapter.modules.items():
        w = base[f"{module}.weight"]
        ref = peft_merge(w, a, b, 2.0).astype(np.float64)
        out = get(f"{module}.weight").astype(np.float64)
        if dtype == np.float32:
            assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) <= 1e-6
        else:  # at most one bf16 ulp apart (fp32 matmul summation order)
            assert np.all(np.abs(out - ref) <= np.abs(ref) * 2.0**-7 + 1e-30)
        exact = w.astype(np.float64) + 2.0 * (b.astype(np.float64) @ a.astype(np.float64))
        assert np.max(np.abs(out - exact)) <= 2.0**-7 * np.max(np.abs(exact))


def test_rslora_scaling(tmp_path):
    write_adapter(tmp_path, r=16, alpha=16, use_rslora=True)
    assert lora.load_adapter(tmp_path).scaling == 16 / math.sqrt(16)


@pytest.mark.parametrize("adapter_layout,base_layout", [("dream", "hf5"), ("hf5", "dream"), ("hf5", "hf5")])
def test_layouts_map_to_each_other(tmp_path, adapter_layout, base_layout):
    write_adapter(tmp_path, layout=adapter_layout)
    base = base_tensors(np.float32, base_layout)
    get = lora.merge_lora(base.__getitem__, base.keys(), lora.load_adapter(tmp_path))
    assert get.merged == sorted(from_canonical(f"{m}.weight", base_layout) for m in MODULES)
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in get.merged or base_layout == "dream"
    name = from_canonical("visual.blocks.0.attn.qkv.weight", base_layout)
    assert not np.array_equal(get(name), base[name])


def test_modules_missing_from_base_are_an_error(tmp_path):
    write_adapter(tmp_path, modules=MODULES | {"model.layers.7.self_attn.k_proj": (8, 16)})
    base = base_tensors(np.float32)
    with pytest.raises(ValueError, match=r"1 adapter module\(s\) match no tensor.*model.layers.7.self_attn.k_proj"):
        lora.merge_lora(base.__getitem__, base.keys(), lora.load_adapter(tmp_path))


def test_shape_mismatch_is_an_error(tmp_path):
    write_adapter(tmp_path)
    base = base_tensors(np.float32)
    base["projector.linear_1.weight"] = np.zeros((16, 17), np.float32)
    get = lora.merge_lora(base.__getitem__, base.keys(), lora.load_adapter(tmp_path), source="ckpt/")
    with pytest.raises(ValueError, match=r"ckpt/: tensor 'projector.linear_1.weight' has shape \(16, 17\)"):
        get("projector.linear_1.weight")


def test_bad_adapters_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load_adapter(tmp_path)
    d, tensors = write_adapter(tmp_path, use_dora=True)
    with pytest.raises(ValueError, match=r"unsupported LoRA options \['use_dora'\]"):
        lora.load_adapter(d)
    d, tensors = write_adapter(tmp_path)
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] = tensors.pop(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
    save_file(tensors, d / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="unexpected adapter tensors.*lora_A.default.weight"):
        lora.load_adapter(d)
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    save_file(tensors, d / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="'model.layers.0.self_attn.q_proj' has lora_B but not both"):
        lora.load_adapter(d)
    d, _ = write_adapter(tmp_path, r=32)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    with pytest.raises(ValueError, match=r"do not fit \[r, in\] / \[out, r\] with r=8"):
        lora.load_adapter(d)
