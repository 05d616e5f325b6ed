"""The training loop: ``train(cfg, workdir, resume=...)``.

One readable sequence: mesh → task → state plan (shardings from ``eval_shape``; bad meshes / rules / batch
sizes fail here, before anything compiles) → data iterator (this process's rows) → restore or init → loop
of (next batch → global arrays → jitted step) with metrics every ``train.log_every`` steps and a checkpoint
every ``train.save_every`` steps and at the end.

Preemption: SIGTERM (TPU maintenance events, SLURM/GKE preemption) sets a flag; the loop finishes the
current step, saves a checkpoint of it, waits for the save and returns normally (the CLI exits 0). With
several processes the flag is agreed on every step (any process saw it → all save the same step).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dreamjax import sharding
from dreamjax.train import checkpoints as ckpt_lib
from dreamjax.train import data as data_lib
from dreamjax.train.metrics import MetricsWriter, Throughput, peak_flops
from dreamjax.train.optimizer import make_optimizer
from dreamjax.train.state import init_state, plan_state
from dreamjax.train.step import make_train_step
from dreamjax.train.tasks import task_from_config

log = logging.getLogger("dreamjax.train")


class _Preemption:
    """SIGTERM → flag (installed only in the main thread; restored on exit)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: finishing this step, saving a checkpoint, exiting")
        self.requested = True

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def setup(cfg, devices=None):
    """Everything up to (not including) allocation: mesh (over ``devices``, default all), rules, task, state
    plan, optimizer and schedule. Raises on a bad mesh, rule table or batch size before anything compiles."""
    t = cfg.train
    mesh = sharding.mesh_from_config(cfg.get("mesh"), devices)
    rules = sharding.rules_from_config(cfg.get("sharding_rules"))
    global_b = int(t.batch_size)
    sharding.check_batch_size(global_b, mesh, rules)
    accum = int(t.get("grad_accum", 1))
    if accum < 1 or global_b % accum or (global_b // accum) % sharding.data_axis_size(mesh, rules):
        raise ValueError(f"train.grad_accum={accum}: the micro-batch train.batch_size/grad_accum = "
                         f"{global_b}/{accum} must be a whole multiple of the {sharding.data_axis_size(mesh, rules)} "
                         "batch shards")
    task = task_from_config(cfg)
    plan, (optimizer, schedule) = plan_state(task, lambda tr: make_optimizer(t, tr), mesh, rules,
                                            jax.random.key(int(t.seed)))
    return mesh, rules, task, plan, optimizer, schedule


def compiler_options(cfg) -> dict:
    """``train.compiler_options``: XLA options (name → value) for the init and step compiles; empty by default.

    For CPU smoke runs and tests, ``{"xla_backend_optimization_level": 0}`` halves the XLA CPU compile time of
    the tiny model (LLVM codegen dominates it) at the price of slower steps; the HLO is unchanged and so are
    the losses (5 steps on the 2×2×2 mesh agreed to 6 digits). An unknown option name fails at the first
    compile ("No such compile option")."""
    opts = cfg.train.get("compiler_options")
    return dict(opts.to_dict() if hasattr(opts, "to_dict") else opts or {})


def batch_shardings(task, mesh, rules, shapes: dict[str, tuple]) -> dict:
    return {k: sharding.batch_sharding(mesh, rules, len(shapes[k])) for k in task.batch_keys}


def _assets(cfg, task, data_assets: dict[str, bytes]) -> dict[str, bytes]:
    files = dict(data_assets)
    files[ckpt_lib.TRAIN_CONFIG] = cfg.to_json_best_effort(indent=2, sort_keys=True).encode()
    if task.model_config is not None and hasattr(task.model_config, "to_hf_dict"):
        files["config.json"] = json.dumps(task.model_config.to_hf_dict(), indent=2, sort_keys=True).encode()
    return files


def _load_init_from(path: str, plan, task, mesh, rules):
    """Params of a dreamjax checkpoint or HF snapshot, placed in the plan's shardings (other variables kept)."""
    from dreamjax.pretrained import DreamVL

    config = task.model_config
    model = DreamVL.from_pretrained(path, dtype=config.param_dtype, mesh=mesh, rules=rules,
                                    scan_layers=config.scan_layers, merge_lora=False)  # kept LoRA: _kept_lora
    return model.params["params"]


def _kept_lora(t, variables, task):
    """LoRA adapters kept in the ``init_from`` checkpoint (``dreamjax convert --keep-lora``): continued when the run
    trains LoRA (rank/alpha must match ``train.lora``), merged into the base otherwise; no-op when there are none."""
    from conversion.lora_checkpoint import init_from_kept_lora
    from dreamjax.train.lora_task import lora_config_from

    spec = t.get("lora")
    run_lora = lora_config_from(spec) if spec is not None and int(spec.get("rank", 0)) > 0 else None
    return init_from_kept_lora(t.init_from, variables, run_lora, task.model_config)


def train(cfg, workdir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Run (or continue) training; returns a summary (last step, last metrics, whether preempted)."""
    workdir = Path(workdir)
    t = cfg.train
    total_steps = int(t.steps)
    mesh, rules, task, plan, optimizer, schedule = setup(cfg)
    log.info("task %s: %s of %s params trained; mesh %s", task.name, f"{plan.num_trained:,}",
             f"{plan.num_params:,}", dict(mesh.shape))

    # ---- data: this process's rows of every global batch
    global_b, nproc = int(t.batch_size), jax.process_count()
    row_sharding = sharding.batch_sharding(mesh, rules, 1)
    offset, local_b = data_lib.process_rows(row_sharding, global_b)
    data_it, data_assets = data_lib.make_iterator(cfg, workdir, global_batch=global_b, local_batch=local_b,
                                                  offset=offset)
    assets = _assets(cfg, task, data_assets)

    # ---- checkpoints: resume or start fresh
    ckpts = ckpt_lib.Checkpoints(workdir / "checkpoints", keep=int(t.get("keep", 3)),
                                 keep_period=t.get("keep_period"), async_save=bool(t.get("async_checkpoint", True)))
    state, start = None, 0
    if ckpts.steps():
        if not resume:
            raise FileExistsError(f"{ckpts.directory} already holds checkpoints (steps {ckpts.steps()}); pass "
                                  "--resume to continue that run, or use a new workdir")
        stored = json.loads(ckpts.stored_config())
        ckpt_lib.check_compatible(stored, json.loads(assets[ckpt_lib.TRAIN_CONFIG]), str(ckpts.directory))
        restored = ckpts.restore(plan.abstract, data_it)
        if restored is not None:
            start, state = restored
            log.info("resumed from step %d in %s", start, ckpts.directory)
    if state is None:
        state = init_state(task, optimizer, plan, jax.random.key(int(t.seed)), compiler_options(cfg))
        if t.get("init_from"):
            loaded = _load_init_from(t.init_from, plan, task, mesh, rules)
            # merge, not replace: variables the checkpoint does not have (e.g. Dream-VLA heads on a Dream-VL
            # checkpoint) keep their fresh initialization
            state = state.replace(params={**state.params, "params": {**state.params["params"], **loaded}})
            state = state.replace(params=_kept_lora(t, state.params, task))
            log.info("initialized params from %s", t.init_from)

    # ---- the step
    first = next(data_it)
    data_lib.check_batch(first, task.batch_keys, local_b)
    shapes = {k: (np.shape(first[k])[0] * nproc,) + tuple(np.shape(first[k])[1:]) for k in task.batch_keys}
    b_shardings = batch_shardings(task, mesh, rules, shapes)
    step_fn = make_train_step(task, optimizer, schedule, plan, mesh, rules, b_shardings, global_batch=global_b,
                              accum=int(t.get("grad_accum", 1)), seed=int(t.seed),
                              compiler_options=compiler_options(cfg))
    flops = task.flops_per_batch(shapes) if task.flops_per_batch else None
    tokens = int(np.prod(shapes["input_ids"])) if "input_ids" in shapes else 0
    throughput = Throughput(global_batch=global_b, tokens_per_batch=tokens, flops_per_step=flops,
                            num_devices=mesh.size,
                            peak_per_device=peak_flops(mesh.devices.flat[0].device_kind, t.get("peak_flops_per_device")))
    writer = MetricsWriter(workdir, total_steps=total_steps, start_step=start, log_every=int(t.get("log_every", 10)),
                           enabled=jax.process_index() == 0, tensorboard=bool(t.get("tensorboard", True)))
    save_every = int(t.get("save_every", 1000))
    metrics_host: dict[str, float] = {}
    preempted = False
    step = start
    batch = first
    try:
        with _Preemption() as preemption:
            t_first = time.perf_counter()
            while step < total_steps:
                state, metrics = step_fn(state, data_lib.global_batch(batch, task.batch_keys, b_shardings, nproc))
                step += 1
                writer.advance()
                if step == start + 1:  # the first step includes compilation: keep it out of the throughput
                    jax.block_until_ready(metrics)
                    log.info("first step done in %.1f s (includes compilation)", time.perf_counter() - t_first)
                    throughput.reset(step)
                if writer.should_log(step, total_steps):
                    metrics_host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    metrics_host.update(throughput.measure(step))
                    writer.write(step, metrics_host)
                preempted = preemption.agreed()
                if preempted or step % save_every == 0 or step == total_steps:
                    ckpts.save(step, state, data_it, assets)
                if preempted:
                    log.warning("preempted: checkpoint of step %d written, stopping", step)
                    break
                if step < total_steps:
                    batch = next(data_it)
    finally:
        ckpts.close()
        writer.close()
    if step == total_steps and not preempted and task.export is not None and task.model_config is not None:
        export_model(workdir / "model", task, state, data_assets)
    return dict(step=step, metrics=metrics_host, preempted=preempted, state=state)


def export_model(path: Path, task, state, data_assets: dict[str, bytes]) -> Path:
    """The trained model as a dreamjax model checkpoint (``DreamVL.from_pretrained`` loads it; LoRA merged)."""
    from dreamjax import checkpoint

    params = jax.jit(task.export)(state.params)
    assets = {k: v for k, v in data_assets.items() if k != "config.json"}
    out = checkpoint.save(path, params, task.model_config.to_hf_dict(), assets, overwrite=True)
    log.info("model checkpoint written to %s", out)
    return out
