"""``dreamjax train --compile-only --topology v5p-8``: compile the real configured train step for a TPU slice
on a machine without one (ahead-of-time, through libtpu's compiler), and report per-chip memory.

Needs ``libtpu`` (``pip install -e '.[tpu-aot]'``, best in its own virtualenv; set ``JAX_PLATFORMS=cpu`` and
``ALLOW_MULTIPLE_LIBTPU_LOAD=1``). Nothing is allocated: params, optimizer state and the batch are
``ShapeDtypeStruct``s with the shardings the run would use. The step is the one a real run compiles: the
mesh, rule table, task, state plan, optimizer and batch-size checks come from ``loop.setup`` (so a batch the
run would refuse is refused here too), the batch shardings from ``loop.batch_shardings``, the step from
``make_train_step`` with the config's ``train.compiler_options``.

Slice names: the accelerator types of ``gcloud compute tpus`` (``v4-32``, ``v5p-8``, ``v5litepod-16``,
``v6e-16``; for v4/v5p the number counts TensorCores, two per chip; for v5e/v6e it counts chips); ``v5e-16``
is accepted for ``v5litepod-16``. The topology arguments are those of AI-Hypercomputer/maxtext's table.

Fits or not: the TPU compiler rejects a program that does not fit in HBM (``RESOURCE_EXHAUSTED``). That is
a result, not a crash: the report then says ``fits: false`` with the compiler's own figures (required vs
available HBM). On success it states the peak against the chip's nominal HBM.

Reported: ``memory_analysis()`` per chip (arguments = params + optimizer state + batch shard, temporaries,
peak) and the analytic model FLOPs of one step (XLA's ``cost_analysis`` counts a scanned layer once, so it is
not used for FLOPs), with the step time that FLOP count takes at the chip's peak bf16 rate (a lower bound).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import jax
import jax.numpy as jnp

log = logging.getLogger("dreamjax.train")

# slice name → get_topology_desc arguments (as AI-Hypercomputer/maxtext's accelerator table)
TOPOLOGIES: dict[str, dict[str, Any]] = {
    "v4-8": dict(topology_name="v4:2x2x1", chip_config_name="megacore"),
    "v4-16": dict(topology_name="v4:2x2x2", chip_config_name="megacore"),
    "v4-32": dict(topology_name="v4:2x2x4", chip_config_name="megacore"),
    "v4-64": dict(topology_name="v4:2x4x4", chip_config_name="megacore"),
    "v5p-8": dict(topology_name="v5:2x2x1", chip_config_name="megacore"),
    "v5p-16": dict(topology_name="v5:2x2x2", chip_config_name="megacore"),
    "v5p-32": dict(topology_name="v5:2x2x4", chip_config_name="megacore"),
    "v5p-64": dict(topology_name="v5:2x4x4", chip_config_name="megacore"),
    "v5p-128": dict(topology_name="v5:4x4x4", chip_config_name="megacore", wrap=(True, True, True)),
    "v5e-8": dict(topology_name="v5e:2x4", chip_config_name="default"),
    "v5e-16": dict(topology_name="v5e:4x4", chip_config_name="default"),
    "v5e-32": dict(topology_name="v5e:4x8", chip_config_name="default"),
    "v5e-256": dict(topology_name="v5e:16x16", chip_config_name="default"),
    "v6e-8": dict(topology_name="v6e:2x4", chip_config_name="default"),
    "v6e-16": dict(topology_name="v6e:4x4", chip_config_name="default"),
}

# gcloud's accelerator-type spelling of v5e slices
ALIASES = {f"v5litepod-{n}": f"v5e-{n}" for n in (8, 16, 32, 256)}

# Nominal HBM per chip (one JAX device per chip), GiB = 2**30 bytes. The compiler's own limit is a little
# lower (it reserves some): v5e reports "available HBM (15.75G)".
HBM_GIB = {"TPU v4": 32, "TPU v5": 95, "TPU v5p": 95, "TPU v5 lite": 16, "TPU v5e": 16, "TPU v6 lite": 32,
           "TPU v6e": 32}

_OOM = re.compile(r"RESOURCE_EXHAUSTED")
_OOM_FIGURES = re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def canonical_topology(name: str) -> str:
    """``v5litepod-16`` → ``v5e-16``; raises on a name not in :data:`TOPOLOGIES` (listing the known ones)."""
    name = ALIASES.get(name, name)
    if name not in TOPOLOGIES:
        raise ValueError(f"--topology {name!r}: unknown TPU slice; known: {', '.join(TOPOLOGIES)} "
                         f"(and {', '.join(ALIASES)})")
    return name


def topology_devices(name: str):
    """The devices of a TPU slice, without the hardware (needs libtpu)."""
    name = canonical_topology(name)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ValueError("--compile-only needs libtpu: pip install -e '.[tpu-aot]' (a separate virtualenv is best; "
                         "set JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1)") from None
    from jax.experimental import topologies

    spec = dict(TOPOLOGIES[name])
    wrap = spec.pop("wrap", (False, False, False))
    topo = topologies.get_topology_desc(platform="tpu", chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=wrap,
                                        **spec)
    return topo.devices


def out_of_memory(message: str) -> dict[str, Any] | None:
    """The compiler's RESOURCE_EXHAUSTED message → ``{"required_bytes", "available_bytes", "message"}``
    (figures None when the message has none); None for any other error."""
    if not _OOM.search(message):
        return None
    line = next(ln for ln in message.splitlines() if "RESOURCE_EXHAUSTED" in ln)
    first = line[line.index("RESOURCE_EXHAUSTED"):].strip()
    out: dict[str, Any] = dict(required_bytes=None, available_bytes=None, message=first[:500])
    m = _OOM_FIGURES.search(message)
    if m:
        scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        out["required_bytes"] = int(float(m.group(1)) * scale[m.group(2)])
        out["available_bytes"] = int(float(m.group(3)) * scale[m.group(4)])
    return out


def lower_step(cfg, devices) -> tuple[Any, dict[str, Any]]:
    """Lower the configured train step over ``devices`` exactly as ``loop.train`` builds it, from abstract
    state and batch. Returns ``(lowered, facts)``: facts are the mesh, batch, parameter counts and model
    FLOPs of one step. Raises (before lowering) what the run would raise: bad mesh, rules, batch split."""
    from dreamjax.train.loop import batch_shardings, setup
    from dreamjax.train.step import make_train_step

    t = cfg.train
    mesh, rules, task, plan, optimizer, schedule = setup(cfg, devices)
    if task.batch_shapes is None:
        raise ValueError(f"task {task.name!r} has no batch_shapes: --compile-only cannot build an abstract batch")
    global_b, accum = int(t.batch_size), int(t.get("grad_accum", 1))
    shapes = {k: v for k, v in task.batch_shapes(global_b).items() if k in task.batch_keys}
    b_sh = batch_shardings(task, mesh, rules, {k: s for k, (s, _) in shapes.items()})
    batch = {k: jax.ShapeDtypeStruct(s, jnp.dtype(dt), sharding=b_sh[k]) for k, (s, dt) in shapes.items()}
    step = make_train_step(task, optimizer, schedule, plan, mesh, rules, b_sh, global_batch=global_b,
                           accum=accum, seed=int(t.get("seed", 0)))
    flops = task.flops_per_batch({k: s for k, (s, _) in shapes.items()}) if task.flops_per_batch else None
    facts = dict(mesh=dict(mesh.shape), global_batch=global_b, grad_accum=accum,
                 micro_batch_per_chip=global_b / accum / len(devices), params=plan.num_params,
                 trained_params=plan.num_trained, step_flops=flops)
    return step.lower(plan.abstract, batch), facts


def compile_only(cfg, topology: str) -> dict[str, Any]:
    """Compile the configured step for ``topology``; returns per-chip memory (bytes), step FLOPs and whether
    it fits (``fits``; when the compiler ran out of HBM, ``oom`` holds its figures and the memory fields are
    absent)."""
    from dreamjax.train.loop import compiler_options
    from dreamjax.train.metrics import peak_flops

    topology = canonical_topology(topology)
    devices = topology_devices(topology)
    kind = devices[0].device_kind
    t0 = time.perf_counter()
    lowered, facts = lower_step(cfg, devices)
    t1 = time.perf_counter()
    flops, peak, hbm = facts["step_flops"], peak_flops(kind), HBM_GIB.get(kind)
    report = dict(topology=topology, devices=len(devices), device_kind=kind, **facts,
                  hbm_bytes=hbm * 2**30 if hbm else None,
                  min_step_s=round(flops / len(devices) / peak, 3) if flops and peak else None,
                  lower_s=round(t1 - t0, 1))
    try:
        compiled = lowered.compile(compiler_options=compiler_options(cfg) or None)
    except jax.errors.JaxRuntimeError as e:
        oom = out_of_memory(str(e))
        if oom is None:
            raise
        report.update(fits=False, oom=oom, compile_s=round(time.perf_counter() - t1, 1))
        return report
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    peak_bytes = int(getattr(ma, "peak_memory_in_bytes", 0)) or None
    report.update(
        argument_bytes=int(ma.argument_size_in_bytes), output_bytes=int(ma.output_size_in_bytes),
        alias_bytes=int(ma.alias_size_in_bytes), temp_bytes=int(ma.temp_size_in_bytes), peak_bytes=peak_bytes,
        fits=None if peak_bytes is None or hbm is None else peak_bytes <= hbm * 2**30,
        compile_s=round(t2 - t1, 1))
    return report


def format_report(r: dict[str, Any]) -> str:
    gib = 2**30
    lines = [f"compiled for {r['topology']} ({r['devices']} × {r['device_kind']}), mesh {r['mesh']}, global batch "
             f"{r['global_batch']} (grad_accum {r['grad_accum']}, {r['micro_batch_per_chip']:g} per chip per "
             f"micro-batch); {r['trained_params']:,} of {r['params']:,} params trained"]
    hbm = f"{r['hbm_bytes'] / gib:.0f} GiB" if r.get("hbm_bytes") else "unknown"
    if r.get("oom"):
        o = r["oom"]
        need = (f": needs {o['required_bytes'] / gib:.2f} GiB of {o['available_bytes'] / gib:.2f} GiB available"
                if o.get("required_bytes") else "")
        lines.append(f"DOES NOT FIT in {r['device_kind']} HBM ({hbm} per chip){need}")
        lines.append(f"compiler: {o['message']}")
    else:
        lines.append(f"per chip: arguments {r['argument_bytes'] / gib:.2f} GiB, temporaries {r['temp_bytes'] / gib:.2f} "
                     f"GiB, peak {(r['peak_bytes'] or 0) / gib:.2f} GiB (output {r['output_bytes'] / gib:.2f}, "
                     f"aliased {r['alias_bytes'] / gib:.2f})")
        share = f" ({r['peak_bytes'] / r['hbm_bytes']:.0%})" if r.get("peak_bytes") and r.get("hbm_bytes") else ""
        verdict = {True: "fits", False: "DOES NOT FIT", None: "fit unknown"}[r.get("fits")]
        lines.append(f"{verdict}: peak of {hbm} HBM per chip{share}")
    if r.get("step_flops"):
        bound = f"; ≥ {r['min_step_s']} s per step at the chip's peak bf16 rate" if r.get("min_step_s") else ""
        lines.append(f"model FLOPs per step {r['step_flops'] / 1e12:.1f} TFLOP ({r['step_flops'] / r['devices'] / 1e12:.1f}"
                     f" per chip){bound}")
    lines.append(f"lower {r['lower_s']} s, compile {r['compile_s']} s")
    return "\n".join(lines)
