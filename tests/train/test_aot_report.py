"""``--compile-only`` without libtpu: the step it lowers is the step a run compiles, bad batches are refused
before anything compiles, slice names and the compiler's out-of-HBM answer are understood. (The TPU compile
itself is tests/train/test_compile_only.py, skipped without libtpu.)"""

import jax
import numpy as np
import pytest

from dreamjax.train import aot
from tests.train.helpers import host_batches, tiny_cfg

MESH_2X2X2 = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")


def test_lowers_the_step_a_run_compiles(shapes_data, tmp_path):
    """Same program text as the loop's step on a real batch from the data pipeline (shapes, dtypes,
    shardings, grad accumulation, seed), so memory measured for a topology is memory of the real run."""
    from dreamjax.train import data as data_lib
    from dreamjax.train.loop import batch_shardings, setup
    from dreamjax.train.step import make_train_step

    cfg = tiny_cfg(*MESH_2X2X2, "--config.train.grad_accum=2", data_dir=shapes_data)
    lowered, facts = aot.lower_step(cfg, jax.devices())

    mesh, rules, task, plan, optimizer, schedule = setup(cfg, jax.devices())
    first = host_batches(cfg, tmp_path, 1)[0]
    sh = batch_shardings(task, mesh, rules, {k: np.shape(first[k]) for k in task.batch_keys})
    step = make_train_step(task, optimizer, schedule, plan, mesh, rules, sh, global_batch=int(cfg.train.batch_size),
                           accum=2, seed=int(cfg.train.seed))
    real = step.lower(plan.abstract, data_lib.global_batch(first, task.batch_keys, sh, 1))
    assert lowered.as_text() == real.as_text()
    assert facts["grad_accum"] == 2 and facts["global_batch"] == 8 and facts["micro_batch_per_chip"] == 0.5
    assert facts["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}


def test_micro_batch_the_run_refuses_is_refused_before_compiling(monkeypatch):
    """8 samples in 4 micro-batches of 2 cannot split over 8 data shards: the run refuses it, so must
    --compile-only (before any lowering), naming train.grad_accum."""
    monkeypatch.setattr(aot, "topology_devices", lambda name: jax.devices())
    cfg = tiny_cfg("--config.train.batch_size=8", "--config.train.grad_accum=4")
    with pytest.raises(ValueError, match=r"train\.grad_accum=4.*8/4.*8 batch shards"):
        aot.compile_only(cfg, "v5e-8")


def test_slice_names():
    assert aot.canonical_topology("v5litepod-16") == "v5e-16"  # gcloud's accelerator type for v5e
    assert aot.canonical_topology("v4-32") == "v4-32"
    with pytest.raises(ValueError, match=r"'v5p-7': unknown TPU slice; known: v4-8, .*v5p-16"):
        aot.canonical_topology("v5p-7")


def test_out_of_hbm_is_reported_with_the_compiler_figures():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(308.22G) exceeds available HBM (15.75G).")
    oom = aot.out_of_memory("jax.errors.JaxRuntimeError: " + message + "\nmore detail")
    assert oom["required_bytes"] == int(308.22 * 2**30) and oom["available_bytes"] == int(15.75 * 2**30)
    assert oom["message"] == message
    assert aot.out_of_memory("INVALID_ARGUMENT: bad sharding") is None

    report = dict(topology="v5e-16", devices=16, device_kind="TPU v5 lite", mesh={"data": 1, "fsdp": 16,
                  "tensor": 1}, global_batch=16, grad_accum=1, micro_batch_per_chip=1.0, params=8_317_072_896,
                  trained_params=8_000_728_576, hbm_bytes=16 * 2**30, step_flops=None, lower_s=4.0, fits=False,
                  oom=oom, compile_s=30.0)
    text = aot.format_report(report)
    assert "DOES NOT FIT in TPU v5 lite HBM (16 GiB per chip): needs 308.22 GiB of 15.75 GiB available" in text
    assert "compiler: RESOURCE_EXHAUSTED" in text
