"""Head files as the reference writes them (torch.save of a DDP-wrapped state_dict) → dreamjax params → back,
byte-identical in fp32 and bf16, as .pt and .safetensors; the Flax modules then match the torch modules
(fp32: max |Δ| / max |ref| ≤ 1e-6); unsafe or malformed files are refused with errors naming file and key."""

import pickle

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from conversion import heads
from conversion.safetensors_io import SafetensorsFile
from tests.models.test_action_heads import A, CASES, D, P, input_shape, rel_err, torch_module

torch = pytest.importorskip("torch")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class DDP(torch.nn.Module):
    """Stands in for DistributedDataParallel: its state_dict keys carry the ``module.`` prefix."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def reference_file(tmp_path, component, kind, dtype, step="latest", seed=0):
    """Write ``{component}--{step}_checkpoint.pt`` exactly as the reference does; return the torch module."""
    torch.manual_seed(seed)
    m = torch_module(component, kind)
    with torch.no_grad():
        for p in m.parameters():  # LayerNorms too, so the test sees every tensor
            p.normal_(0, 0.3)
    m = m.to(DTYPES[dtype])
    torch.save(DDP(m).state_dict(), tmp_path / heads.head_file_name(component, step))
    return m


def raw_tensors(path):
    if path.suffix == ".safetensors":
        f = SafetensorsFile(path)
        return {k: f.get(k) for k in f.keys()}
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: heads.tensor_to_numpy(v) for k, v in sd.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("component,kind", CASES)
def test_round_trip_byte_identical_and_module_parity(tmp_path, component, kind, dtype):
    tm = reference_file(tmp_path, component, kind, dtype)
    src = tmp_path / heads.head_file_name(component)
    original = raw_tensors(src)
    assert all(k.startswith("module.") for k in original)

    params, found_kind = heads.load_head(tmp_path, component, hidden_size=D, action_dim=A, proprio_dim=P)
    assert found_kind == kind
    assert all(np.asarray(v).dtype == np.dtype(dtype if dtype == "float32" else ml_dtypes.bfloat16)
               for v in _leaves(params))

    sd = heads.params_to_head_state_dict(component, params)
    assert list(sd) == [k[len("module."):] for k in original]  # state-dict order kept
    (tmp_path / "out").mkdir()
    for fmt in ("pt", "safetensors"):
        out = heads.save_head_file(tmp_path / "out" / heads.head_file_name(component, 50000, fmt), sd, fmt=fmt)
        back = raw_tensors(out)
        assert list(back) == list(original)
        for k, v in original.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes(), k
        again, _ = heads.load_head(out, component)  # and the written file loads back to the same params
        assert all(a.tobytes() == b.tobytes() for a, b in zip(_leaves(again), _leaves(params)))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left
    saved = heads.save_head(tmp_path / "out", component, params, step=7, fmt="safetensors", ddp_prefix=False)
    assert saved.name == f"{component}--7_checkpoint.safetensors"
    assert all(back_v.tobytes() == original["module." + k].tobytes() for k, back_v in raw_tensors(saved).items())

    # The params drive the Flax module like the torch module (compared in fp32 on the same values).
    module = heads.build_module(component, kind=kind, hidden_size=D, action_dim=A, proprio_dim=P)
    x = np.random.default_rng(1).standard_normal(input_shape(component)).astype(np.float32)
    p32 = _tree_map(lambda a: np.asarray(a, np.float32), params)
    out = np.asarray(module.apply({"params": p32}, jnp.asarray(x)))
    with torch.no_grad():
        ref = tm.float()(torch.from_numpy(x)).numpy()
    assert rel_err(out, ref) <= 1e-6


def test_params_to_state_dict_inverse_and_kind_check():
    sd = {k: v.numpy() for k, v in torch_module("action_head", "ddim").state_dict().items()}
    params = heads.head_state_dict_to_params("action_head", sd)
    assert set(params) == {"noise_predictor"}
    assert params["noise_predictor"]["mlp_resnet"]["fc1"]["kernel"].shape == (A * D, D)
    assert {k: v.tobytes() for k, v in heads.params_to_head_state_dict("action_head", params, "ddim").items()} == \
        {k: v.tobytes() for k, v in sd.items()}
    with pytest.raises(ValueError, match="exactly one"):
        heads.params_to_head_state_dict("action_head", params, kind="flow")


def test_find_head_file(tmp_path):
    with pytest.raises(ValueError, match=r"exactly one action_head .*found none"):
        heads.find_head_file(tmp_path, "action_head")
    for comp in heads.COMPONENTS:
        reference_file(tmp_path, comp, "flow" if comp == "action_head" else None, "float32")
    (tmp_path / "dataset_statistics.json").write_text("{}")
    assert heads.find_head_file(tmp_path, "action_head").name == "action_head--latest_checkpoint.pt"
    assert heads.find_head_file(tmp_path, "proprio_projector").name == "proprio_projector--latest_checkpoint.pt"
    reference_file(tmp_path, "action_head", "flow", "float32", step=50000)
    with pytest.raises(ValueError, match=r"action_head--50000_checkpoint.pt.*action_head--latest_checkpoint.pt"):
        heads.load_head(tmp_path, "action_head")


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickle.loads(pickle.dumps(Payload()))  # the payload is live: an ordinary unpickle creates the file
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "action_head--latest_checkpoint.pt"
    torch.save({"module.model.fc1.weight": torch.zeros(2, 2), "x": Payload()}, path)
    with pytest.raises(ValueError, match="action_head--latest_checkpoint.pt"):
        heads.load_head(path, "action_head")
    assert not marker.exists()


@pytest.mark.parametrize("obj,match", [
    (lambda: torch.nn.Linear(2, 2), "refused or unreadable"),  # a pickled module
    (lambda: {"model": {"fc1.weight": torch.zeros(2)}}, "flat dict"),  # nested
    (lambda: {"fc1.weight": torch.zeros(2), "step": 5}, "'step' is a int"),  # non-tensor value
    (lambda: [torch.zeros(2)], "got list"),
])
def test_non_state_dict_files_are_refused(tmp_path, obj, match):
    path = tmp_path / "proprio_projector--latest_checkpoint.pt"
    torch.save(obj(), path)
    with pytest.raises(ValueError, match=match) as e:
        heads.load_head(path, "proprio_projector")
    assert str(path) in str(e.value)


def _sd(component, kind=None):
    return {k: v.numpy() for k, v in torch_module(component, kind).state_dict().items()}


def test_key_and_shape_errors_name_key_and_file(tmp_path):
    path = tmp_path / "action_head--latest_checkpoint.pt"
    sd = _sd("action_head", "l1")
    del sd["model.fc2.bias"]
    heads.save_head_file(path, sd)
    with pytest.raises(ValueError, match=r"action_head--latest_checkpoint.pt.*missing \['model.fc2.bias'\]"):
        heads.load_head(path, "action_head")

    sd = _sd("action_head", "flow")
    sd["flow_predictor.mlp_resnet.extra.weight"] = np.zeros(3, np.float32)
    heads.save_head_file(path, sd, fmt="pt")
    with pytest.raises(ValueError, match=r"unexpected \['flow_predictor.mlp_resnet.extra.weight'\]"):
        heads.load_head(path, "action_head")

    sd = _sd("action_head", "l1")
    sd["model.mlp_resnet_blocks.1.ffn.1.weight"] = np.zeros((D, D + 1), np.float32)
    st = tmp_path / "action_head--latest_checkpoint.safetensors"
    heads.save_head_file(st, sd)
    with pytest.raises(ValueError, match=r"safetensors: tensor 'model.mlp_resnet_blocks.1.ffn.1.weight' has shape"):
        heads.load_head(st, "action_head")

    with pytest.raises(ValueError, match="not an action head"):
        heads.head_state_dict_to_params("action_head", _sd("proprio_projector"))
    with pytest.raises(ValueError, match="hidden_size=32 but the model expects 64"):
        heads.head_state_dict_to_params("proprio_projector", _sd("proprio_projector"), hidden_size=64)
    with pytest.raises(ValueError, match="unknown head component"):
        heads.head_state_dict_to_params("value_head", {})


def test_ddp_prefix_only_stripped_when_on_every_key(tmp_path):
    sd = _sd("noisy_action_projector")
    plain = tmp_path / "noisy_action_projector--latest_checkpoint.pt"
    heads.save_head_file(plain, sd, ddp_prefix=False)
    assert set(heads.load_head_state_dict(plain)) == set(sd)
    mixed = {("module." + k if k.startswith("fc1") else k): v for k, v in sd.items()}
    heads.save_head_file(plain, mixed, ddp_prefix=False)
    with pytest.raises(ValueError, match=r"unexpected \['module.fc1.bias', 'module.fc1.weight'\]"):
        heads.load_head(plain, "noisy_action_projector")


def _leaves(tree):
    return [v for _, v in sorted(_flatten(tree))]


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        yield from (_flatten(v, f"{prefix}/{k}") if isinstance(v, dict) else [(f"{prefix}/{k}", v)])


def _tree_map(f, tree):
    return {k: _tree_map(f, v) if isinstance(v, dict) else f(v) for k, v in tree.items()}
