"""Dream-VLA checkpoint dirs through convert → export: head files (.pt with the DDP prefix, bf16 and fp32;
safetensors without it) come back byte-identical under their names, and `--merge-lora` merges a peft
adapter exactly as peft's merge does."""

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402

from conversion import heads as head_io  # noqa: E402
from conversion.safetensors_io import SafetensorsDir, SafetensorsFile  # noqa: E402
from dreamjax import checkpoint, cli  # noqa: E402
from tests.conversion.test_lora import peft_merge, write_adapter  # noqa: E402
from tests.conversion.test_roundtrip import _same_tensors  # noqa: E402
from tests.hf_fixtures import write_dream_vl_snapshot  # noqa: E402

HEADS = [("action_head", "flow", ml_dtypes.bfloat16, "pt", True),
         ("proprio_projector", None, np.float32, "pt", True),
         ("noisy_action_projector", None, ml_dtypes.bfloat16, "safetensors", False)]


def _raw(path):
    if path.suffix == ".safetensors":
        f = SafetensorsFile(path)
        return {k: f.get(k) for k in f.keys()}
    return {k: head_io.tensor_to_numpy(v) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def _write_heads(src, hidden):
    rng = np.random.default_rng(0)
    for component, kind, dtype, fmt, ddp in HEADS:
        module = head_io.build_module(component, kind=kind, hidden_size=hidden, proprio_dim=8)
        shapes = jax.eval_shape(module.init, jax.random.key(0), *_dummy(component, hidden))
        params = jax.tree_util.tree_map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(dtype),
                                        __import__("flax").linen.unbox(shapes)["params"])
        sd = head_io.params_to_head_state_dict(component, params, kind)
        head_io.save_head_file(src / head_io.head_file_name(component, 50000, fmt), sd, fmt=fmt, ddp_prefix=ddp)


def _dummy(component, hidden):
    return {"action_head": (np.zeros((1, 8, 7 * hidden), np.float32),),
            "proprio_projector": (np.zeros((1, 8), np.float32),),
            "noisy_action_projector": (np.zeros((1, 56, 1), np.float32),)}[component]


def test_vla_dir_with_heads_round_trips_byte_identical(hf_model, tmp_path):
    src = tmp_path / "vla"
    write_dream_vl_snapshot(hf_model, src, np.random.default_rng(0), shards=2)
    _write_heads(src, hf_model.config.text_config.hidden_size)
    assert cli.main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "ckpt")]) == 0
    heads, info = checkpoint.load_heads(tmp_path / "ckpt")
    assert set(heads) == {h[0] for h in HEADS} and info["action_head"]["kind"] == "flow"
    assert cli.main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    _same_tensors(src, tmp_path / "back")
    for component, _, _, fmt, _ in HEADS:
        name = head_io.head_file_name(component, 50000, fmt)
        a, b = _raw(src / name), _raw(tmp_path / "back" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), (name, k)


def test_merge_lora_on_convert_equals_peft_merge(hf_model, tmp_path):
    src = tmp_path / "vla"
    write_dream_vl_snapshot(hf_model, src, np.random.default_rng(0), dtype=ml_dtypes.bfloat16, shards=1)
    modules = {"model.layers.0.self_attn.q_proj": (64, 64), "visual.blocks.1.attn.qkv": (96, 32),
               "projector.linear_1": (64, 64)}
    adapter_dir, lora = write_adapter(tmp_path, r=4, alpha=2, modules=modules)
    assert cli.main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "ckpt"),
                     "--merge-lora", str(adapter_dir)]) == 0
    assert cli.main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    base, back = SafetensorsDir(src), SafetensorsDir(tmp_path / "back")
    for k in base.keys():
        module = k.removesuffix(".weight")
        if module in modules:
            a, b = lora[f"base_model.model.{module}.lora_A.weight"], lora[f"base_model.model.{module}.lora_B.weight"]
            want = peft_merge(base.get(k), a, b, 2 / 4)
            assert back.get(k).tobytes() == want.tobytes(), k
            assert not np.array_equal(back.get(k), base.get(k)), "the update is not a no-op"
        else:
            assert back.get(k).tobytes() == base.get(k).tobytes(), k


def test_lora_for_missing_module_fails_and_leaves_nothing(hf_model, tmp_path, caplog):
    src = tmp_path / "vla"
    write_dream_vl_snapshot(hf_model, src, np.random.default_rng(0), dtype=np.float32, shards=1)
    adapter_dir, _ = write_adapter(tmp_path, r=4, alpha=2, modules={"model.layers.7.self_attn.q_proj": (64, 64)})
    assert cli.main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "ckpt"),
                     "--merge-lora", str(adapter_dir)]) == 2
    assert "match no tensor" in caplog.text and "model.layers.7.self_attn.q_proj" in caplog.text
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.glob(".ckpt*"))
