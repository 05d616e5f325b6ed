"""peft LoRA adapters kept as dreamjax LoRA params (`convert --keep-lora`), and back.

* peft dir → dreamjax → peft dir is byte-identical, file for file (adapter written by the `safetensors`
  library as peft writes it), fp32 and bf16, scanned and unscanned, both HF layouts; the base comes back
  unmerged; the default export equals `--merge-lora` on import byte for byte.
* The kept tree is `a = A.T`, `b = B.T` at the kernel's path (checked against numpy, not the code under test).
* Logits: the base with the kept adapters applied (`dreamjax.models.lora.apply`) = the merge-on-import model =
  the PyTorch model with peft's merge done by hand (`W += (α/r)·B@A`; peft is not installed here): ≤ 1e-5 relative.
* `train.init_from` continues the adapters (or merges them when the run trains no LoRA).
* Every refusal names the file and the field/module, and leaves nothing behind.
"""

import copy
import json
import re

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")

import jax  # noqa: E402

from conversion.heads import tensor_to_numpy  # noqa: E402
from conversion.keymap import from_canonical, to_canonical  # noqa: E402
from conversion.lora import load_adapter, merge_lora  # noqa: E402
from conversion.lora_checkpoint import KeptLora, init_from_kept_lora  # noqa: E402
from conversion.safetensors_io import SafetensorsDir  # noqa: E402
from dreamjax import cli  # noqa: E402
from dreamjax.models import lora as jlora  # noqa: E402
from dreamjax.pretrained import DreamVL  # noqa: E402
from tests.conversion.test_roundtrip import _same_tensors  # noqa: E402
from tests.hf_fixtures import GRIDS, torch_logits, write_dream_vl_snapshot, write_hf5_snapshot  # noqa: E402
from tests.tiny import rel_err  # noqa: E402

# canonical module names of the tiny Qwen2-VL / Dream-VL (LLM, ViT, merger, lm_head; projector when present)
MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj",
           "visual.blocks.1.attn.qkv", "visual.merger.mlp.2", "lm_head"]


def linear_shapes(state_dict_items) -> dict:
    """canonical module → (out, in) of every 2-D weight."""
    return {to_canonical(k, "hf5").removesuffix(".weight"): tuple(v.shape)
            for k, v in state_dict_items if k.endswith(".weight") and len(v.shape) == 2}


def write_peft_adapter(d, shapes, modules, *, r=4, alpha=8, layout="dream", dtype=torch.float32, scale=0.1, seed=0,
                       **cfg_extra):
    """An adapter dir as peft's save_pretrained writes it: safetensors (via the `safetensors` library, metadata
    {"format": "pt"}) + adapter_config.json. Returns {key: numpy tensor}."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in modules:
        out, inp = shapes[m]
        name = from_canonical(m, layout)
        sd[f"base_model.model.{name}.lora_A.weight"] = (scale * torch.randn(r, inp, generator=g)).to(dtype)
        sd[f"base_model.model.{name}.lora_B.weight"] = (scale * torch.randn(out, r, generator=g)).to(dtype)
    cfg = {"alpha_pattern": {}, "base_model_name_or_path": None, "bias": "none", "fan_in_fan_out": False,
           "inference_mode": True, "init_lora_weights": "gaussian", "lora_alpha": alpha, "lora_dropout": 0.0,
           "modules_to_save": None, "peft_type": "LORA", "r": r, "rank_pattern": {}, "revision": None,
           "target_modules": sorted({m.split(".")[-1] for m in modules}), "task_type": None, "use_dora": False,
           "use_rslora": False, **cfg_extra}
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    st_torch.save_file(sd, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {k: tensor_to_numpy(v) for k, v in sd.items()}


def _convert(src, out, *extra):
    return cli.main(["convert", "--from-hf", str(src), "--out", str(out), *extra])


def _node(tree, path):
    for p in path.split("/"):
        tree = tree[p]
    return tree


@pytest.mark.parametrize("kind,scan,mesh", [("hf5_fp32", False, None),
                                            ("dream_bf16", True, "data=1,fsdp=2,tensor=4")])
def test_peft_dir_round_trip_is_byte_identical_and_export_merges_like_import(hf_model, tmp_path, kind, scan, mesh):
    src = tmp_path / "hf"
    if kind == "hf5_fp32":
        write_hf5_snapshot(hf_model, src)
        layout, dtype, shapes = "hf5", torch.float32, linear_shapes(hf_model.state_dict().items())
        modules = MODULES
    else:
        sd = write_dream_vl_snapshot(hf_model, src, np.random.default_rng(0), dtype=ml_dtypes.bfloat16, shards=2)
        layout, dtype, shapes = "dream", torch.bfloat16, linear_shapes(sd.items())
        modules = MODULES + ["projector.linear_1"]
    tensors = write_peft_adapter(tmp_path / "adapter", shapes, modules, layout=layout, dtype=dtype)
    extra = (["--scan-layers"] if scan else []) + (["--mesh", mesh] if mesh else [])
    assert _convert(src, tmp_path / "kept", "--keep-lora", str(tmp_path / "adapter"), *extra) == 0

    # the kept tree: a = A.T, b = B.T at the kernel's path; scanned layers stacked, zeros where not adapted
    tree = KeptLora(tmp_path / "kept").tree
    q = _node(tree, "params/model/layers/self_attn/q_proj/kernel" if scan else
              "params/model/layers_0/self_attn/q_proj/kernel")
    key = f"base_model.model.{from_canonical('model.layers.0.self_attn.q_proj', layout)}"
    a0, b0 = (q["a"][0], q["b"][0]) if scan else (q["a"], q["b"])
    assert a0.tobytes() == np.ascontiguousarray(tensors[key + ".lora_A.weight"].T).tobytes()
    assert b0.tobytes() == np.ascontiguousarray(tensors[key + ".lora_B.weight"].T).tobytes()
    if scan:
        assert q["a"].shape == (2, 64, 4) and not q["a"][1].any() and not q["b"][1].any()

    # back to HF: base unmerged + the adapter dir, byte for byte (both files)
    assert cli.main(["export", "--ckpt", str(tmp_path / "kept"), "--out", str(tmp_path / "base_back"), "--layout",
                     layout, "--lora-adapter-out", str(tmp_path / "adapter_back")]) == 0
    _same_tensors(src, tmp_path / "base_back")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "adapter_back" / f).read_bytes() == (tmp_path / "adapter" / f).read_bytes(), f
    assert not [p for p in (tmp_path / "base_back").iterdir() if p.name.startswith("lora")], "no LoRA assets leak"

    # the default export merges: byte-identical to what --merge-lora merges on import (conversion.lora)
    assert cli.main(["export", "--ckpt", str(tmp_path / "kept"), "--out", str(tmp_path / "kept_hf"),
                     "--layout", layout]) == 0
    base, merged = SafetensorsDir(src), SafetensorsDir(tmp_path / "kept_hf")
    on_import = merge_lora(base.get, base.keys(), load_adapter(tmp_path / "adapter"))
    assert sorted(merged.keys()) == sorted(base.keys())
    for k in base.keys():
        assert merged.dtype(k) == base.dtype(k) and merged.get(k).tobytes() == on_import(k).tobytes(), k
    for m in modules:
        name = from_canonical(m, layout) + ".weight"
        assert name in on_import.merged and not np.array_equal(merged.get(name), base.get(name)), name
    assert not list(tmp_path.glob(".*partial*"))


@pytest.fixture(scope="module")
def kept_and_merged(hf_model, tmp_path_factory):
    """A transformers fp32 snapshot, its adapter (r 4, α 8), converted scanned with --keep-lora and --merge-lora."""
    tmp = tmp_path_factory.mktemp("keep")
    hf_model.save_pretrained(tmp / "hf")
    tensors = write_peft_adapter(tmp / "adapter", linear_shapes(hf_model.state_dict().items()), MODULES)
    assert _convert(tmp / "hf", tmp / "kept", "--keep-lora", str(tmp / "adapter"), "--scan-layers") == 0
    assert _convert(tmp / "hf", tmp / "merged", "--merge-lora", str(tmp / "adapter"), "--scan-layers") == 0
    return tmp, tensors


def test_kept_lora_gives_merge_on_import_and_torch_peft_logits(hf_model, batch, kept_and_merged):
    tmp, tensors = kept_and_merged
    ids, mask, pv = batch
    valid = mask.astype(bool)

    model = DreamVL.from_pretrained(tmp / "kept", merge_lora=False)  # the base; one compiled forward for all
    base_params = model.params
    plain = np.asarray(model(ids, mask, pv, GRIDS))
    kept = KeptLora(tmp / "kept")
    assert (kept.r, kept.lora_alpha) == (4, 8.0)
    model.params = jlora.apply(base_params, kept.tree, jlora.LoraConfig(rank=4, alpha=8, exclude=()))
    with_lora = np.asarray(model(ids, mask, pv, GRIDS))
    model.params = DreamVL.from_pretrained(tmp / "merged").params
    merged = np.asarray(model(ids, mask, pv, GRIDS))
    model.params = DreamVL.from_pretrained(tmp / "kept").params  # by default a loader gets the adapted model
    loaded = np.asarray(model(ids, mask, pv, GRIDS))

    # PyTorch with peft's merge by hand: W += (lora_alpha / r) · B @ A for every adapted Linear
    ref_model = copy.deepcopy(hf_model)
    with torch.no_grad():
        for m in MODULES:
            key = f"base_model.model.{m}"
            a, b = (torch.from_numpy(tensors[f"{key}.lora_{x}.weight"]) for x in "AB")
            ref_model.get_submodule(from_canonical(m, "hf5")).weight += (8 / 4) * (b @ a)
    ref = torch_logits(ref_model, ids, mask, pv, GRIDS)

    assert rel_err(with_lora[valid], ref[valid]) <= 1e-5
    assert rel_err(merged[valid], ref[valid]) <= 1e-5
    assert rel_err(with_lora[valid], merged[valid]) <= 1e-5
    assert rel_err(loaded[valid], merged[valid]) <= 1e-5
    assert rel_err(plain[valid], ref[valid]) > 1e-2, "the adapters change the model"


@pytest.fixture(scope="module")
def run_base(kept_and_merged):
    """The base as a run holds it after loading ``init_from`` (unscanned: the kept tree is scanned, so the
    adapters are restacked on the way)."""
    model = DreamVL.from_pretrained(kept_and_merged[0] / "kept", scan_layers=False, merge_lora=False)
    return model.config, {"params": model.params["params"]}


def _run_variables(run_base, lora_cfg, abstract=False):
    """The run's variables: the base + fresh adapters for ``lora_cfg`` (none when None; shapes only when
    ``abstract``: enough for the checks that refuse a run)."""
    config, variables = run_base
    if lora_cfg is None:
        return config, dict(variables)
    def init(key):
        return jlora.init(key, variables, lora_cfg)

    adapters = jax.eval_shape(init, jax.random.key(0)) if abstract else init(jax.random.key(0))
    return config, {**variables, "lora": adapters}


def _at(tree, path, scan):
    """The leaf at an unscanned path (``…/layers_1/…``), indexing the stacked array when ``scan``."""
    m = re.search(r"/(layers|blocks)_(\d+)/", path)
    if not scan or m is None:
        return _node(tree, path)
    return {k: v[int(m.group(2))] for k, v in _node(tree, path.replace(m.group(0), f"/{m.group(1)}/")).items()}


@pytest.mark.parametrize("scan", [False, True])
def test_init_from_continues_kept_adapters(kept_and_merged, run_base, scan):
    tmp, tensors = kept_and_merged
    run = jlora.LoraConfig(rank=4, alpha=8, exclude=(r"(^|/)embed_tokens/", r"(^|/)patch_embed/"))
    if scan:  # a scanned run (as the 7B configs): adapters go into one layer of the stacked arrays
        model = DreamVL.from_pretrained(tmp / "kept", merge_lora=False)
        config, variables = _run_variables((model.config, {"params": model.params["params"]}), run)
    else:  # unscanned: the kept (scanned) adapters are unstacked on the way
        config, variables = _run_variables(run_base, run)
    out = init_from_kept_lora(tmp / "kept", variables, run, config)
    got, fresh = jax.device_get(out["lora"]), jax.device_get(variables["lora"])
    for m, path in [("model.layers.1.mlp.down_proj", "params/model/layers_1/mlp/down_proj/kernel"),
                    ("model.layers.0.self_attn.q_proj", "params/model/layers_0/self_attn/q_proj/kernel"),
                    ("visual.blocks.1.attn.qkv", "params/visual/blocks_1/attn/qkv/kernel"),
                    ("lm_head", "params/lm_head/kernel")]:
        node = _at(got, path, scan)
        assert node["a"].tobytes() == np.ascontiguousarray(tensors[f"base_model.model.{m}.lora_A.weight"].T).tobytes()
        assert node["b"].tobytes() == np.ascontiguousarray(tensors[f"base_model.model.{m}.lora_B.weight"].T).tobytes()
    for path in ("params/model/layers_0/self_attn/k_proj/kernel", "params/model/layers_1/self_attn/q_proj/kernel"):
        assert all(_at(got, path, scan)[x].tobytes() == _at(fresh, path, scan)[x].tobytes() for x in "ab"), \
            f"{path}: kernels (and layers) the adapter does not cover keep their fresh init"
    assert out["params"] is variables["params"]

    # a run without LoRA starts from the merged model: the merge-on-import params (fp32 sums in another order)
    merged_run = jax.device_get(init_from_kept_lora(tmp / "kept", {"params": variables["params"]}, None,
                                                    config)["params"])
    want = jax.device_get(DreamVL.from_pretrained(tmp / "merged", scan_layers=scan).params["params"])
    for kp, w in jax.tree_util.tree_leaves_with_path(want):
        got_leaf = merged_run
        for k in kp:
            got_leaf = got_leaf[k.key]
        np.testing.assert_allclose(got_leaf, w, rtol=0, atol=1e-6 * max(1.0, float(np.abs(w).max())),
                                   err_msg=jax.tree_util.keystr(kp))


@pytest.mark.parametrize("run,message", [
    (dict(rank=8, alpha=8, exclude=()), r"train.lora.rank=8 but the LoRA adapters kept in .*kept have r=4 "
                                        r"\(.*assets/lora.json\)"),
    (dict(rank=4, alpha=16, exclude=()), r"train.lora.alpha=16 but .* have lora_alpha=8"),
    (dict(rank=4, alpha=8), r"kept adapter of 'lm_head' \(params/lm_head/kernel\) is on a kernel this run does not "
                            r"adapt \(train.lora.include"),
])
def test_init_from_refuses_a_run_that_does_not_fit(kept_and_merged, run_base, run, message):
    tmp, _ = kept_and_merged
    cfg = jlora.LoraConfig(**run)
    config, variables = _run_variables(run_base, cfg, abstract=True)
    with pytest.raises(ValueError, match=message):
        init_from_kept_lora(tmp / "kept", variables, cfg, config)


BAD = {
    "rslora": (dict(use_rslora=True), MODULES, r"adapter_config.json: use_rslora=true .* use --merge-lora"),
    "dora": (dict(use_dora=True), MODULES, r"unsupported LoRA options \['use_dora'\]"),
    "modules_to_save": (dict(modules_to_save=["lm_head"]), MODULES, r"unsupported LoRA options \['modules_to_save'\]"),
    "bias": (dict(bias="lora_only"), MODULES, r"unsupported LoRA options \['bias'\]"),
    "conv": ({}, ["visual.patch_embed.proj"], r"adapter module 'visual.patch_embed.proj' is not a Linear layer"),
    "no_such_layer": ({}, ["model.layers.2.self_attn.q_proj"], r"adapter module 'model.layers.2.self_attn.q_proj' "
                                                              r"has no weight"),
    "shape": ({}, ["model.layers.0.self_attn.q_proj"], r"'model.layers.0.self_attn.q_proj': lora_A \[4, 48\] / lora_B "
                                                       r"\[64, 4\] adapt a \[64, 48\] Linear, but the model's weight is "
                                                       r"\[64, 64\]"),
    "both": ({}, MODULES, r"--merge-lora and --keep-lora exclude each other"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapters_are_refused_naming_the_field_and_nothing_is_left(hf_model, tmp_path, caplog, case):
    cfg, modules, message = BAD[case]
    hf_model.save_pretrained(tmp_path / "hf")
    shapes = linear_shapes(hf_model.state_dict().items()) | {"visual.patch_embed.proj": (32, 1176),
                                                             "model.layers.2.self_attn.q_proj": (64, 64)}
    if case == "shape":
        shapes["model.layers.0.self_attn.q_proj"] = (64, 48)
    write_peft_adapter(tmp_path / "adapter", shapes, modules, **cfg)
    extra = ["--merge-lora", str(tmp_path / "adapter")] if case == "both" else []
    assert _convert(tmp_path / "hf", tmp_path / "ckpt", "--keep-lora", str(tmp_path / "adapter"), *extra) == 2
    assert re.search(message, caplog.text), caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "hf"], "nothing half-written"


def test_mixed_dtypes_and_export_without_kept_adapters_are_refused(hf_model, tmp_path, caplog):
    hf_model.save_pretrained(tmp_path / "hf")
    tensors = write_peft_adapter(tmp_path / "adapter", linear_shapes(hf_model.state_dict().items()), MODULES[:2])
    sd = {k: torch.from_numpy(v) for k, v in tensors.items()}
    first = next(iter(sd))
    sd[first] = sd[first].to(torch.bfloat16)  # one tensor in another dtype
    st_torch.save_file(sd, str(tmp_path / "adapter" / "adapter_model.safetensors"), metadata={"format": "pt"})
    assert _convert(tmp_path / "hf", tmp_path / "ckpt", "--keep-lora", str(tmp_path / "adapter")) == 2
    assert "adapter tensors mix dtypes ['bfloat16', 'float32']" in caplog.text
    assert _convert(tmp_path / "hf", tmp_path / "ckpt", "--keep-lora", str(tmp_path / "adapter"),
                    "--dtype", "float32") == 0, "--dtype makes them one"
    assert _convert(tmp_path / "hf", tmp_path / "plain") == 0
    assert cli.main(["export", "--ckpt", str(tmp_path / "plain"), "--lora-adapter-out", str(tmp_path / "a")]) == 2
    assert "keeps no LoRA adapters (convert with --keep-lora" in caplog.text
    (tmp_path / "a").mkdir()
    assert cli.main(["export", "--ckpt", str(tmp_path / "ckpt"), "--lora-adapter-out", str(tmp_path / "a")]) == 2
    assert re.search(r"/a exists; pass --overwrite", caplog.text)
    assert cli.main(["export", "--ckpt", str(tmp_path / "ckpt"), "--lora-adapter-out", str(tmp_path / "a"),
                     "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_train_loop_hook_takes_rank_alpha_and_patterns_from_train_lora(kept_and_merged, run_base):
    """What ``dreamjax.train.loop`` calls after loading ``train.init_from`` (a full train step is too slow here;
    one step of configs/dream_vl_tiny_train.py from a kept-LoRA checkpoint was run by hand, see the report)."""
    import ml_collections

    from dreamjax.train.loop import _kept_lora

    tmp, tensors = kept_and_merged
    config, variables = _run_variables(run_base, jlora.LoraConfig(rank=4, alpha=8, exclude=()))
    task = type("Task", (), {"model_config": config})
    t = ml_collections.ConfigDict(dict(init_from=str(tmp / "kept"), lora=dict(rank=4, alpha=8.0, exclude=())))
    got = _node(jax.device_get(_kept_lora(t, variables, task)["lora"]), "params/lm_head/kernel")
    assert got["b"].tobytes() == np.ascontiguousarray(tensors["base_model.model.lm_head.lora_B.weight"].T).tobytes()
    t.lora.exclude = None  # the default: lm_head and the embeddings are not adapted (peft all-linear)
    _, default_run = _run_variables(run_base, jlora.LoraConfig(rank=4, alpha=8), abstract=True)
    with pytest.raises(ValueError, match=r"'lm_head' \(params/lm_head/kernel\) is on a kernel this run does not "
                                         r"adapt \(train.lora.include=\['.\*'\], exclude=\['\(\^\|/\)lm_head/'"):
        _kept_lora(t, default_run, task)
    t.lora.rank = 0  # no LoRA in the run: merged into the base
    merged = _kept_lora(t, {"params": variables["params"]}, task)
    assert set(merged) == {"params"} and merged["params"] is not variables["params"]
    t.init_from = str(tmp / "hf")  # an HF snapshot keeps no adapters: unchanged
    assert _kept_lora(t, variables, task)["lora"] is variables["lora"]
