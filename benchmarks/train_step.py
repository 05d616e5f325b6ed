"""Train step of a small Dream-VL: dreamjax (one jitted step) vs PyTorch (transformers Qwen2-VL, bidirectional),
same weights, same batch, same noise, same loss, same optimizer, in one run.

    python benchmarks/train_step.py [--repeats 10] [--threads 2] [--dtype float32|bfloat16] [--logits-at all|targets]
        [--attention-impl xla|jax] [--parts] [--floor] [--malloc reuse|default]

Model and inputs: those of ``forward.py`` (LLM 4×512, vocab 32000; ViT 4×256; batch 2 × S = 192 with two
224² images per sample). Step = forward + backward + global-norm clip 1.0 + AdamW (β 0.9/0.999, eps 1e-8,
wd 0, lr 1e-5) on the masked-diffusion loss of spec §4 with CART weights (q = 0.1): the text positions are
the maskable set, each row gets one noise level, masked inputs become the mask token, targets shift by one.
The mask (``t``, ``u`` draws) is drawn once on the host and given to both frameworks, so both compute the
same loss (printed); JAX runs the loop's own pieces (``objective.masked_diffusion_loss``, optax AdamW,
jit with donated state), torch runs ``loss.backward()``, ``clip_grad_norm_`` and ``torch.optim.AdamW`` with
the CART weights from the reference's L×L matrix.

Timing as in ``forward.py``: interleaved runs (jax, torch, jax, …), median and min, both pinned to
``--threads`` cores. FLOPs: 3 × the analytic forward FLOPs (``forward.model_flops``); MFU against the best
measured fp32 matmul peak. The last line is one JSON record.

On a loaded machine use ``--threads 1``: with 2 threads each OpenMP / XLA parallel region waits for both
threads to be scheduled, which a busy machine delays (torch far more than XLA: a 2-thread torch step took
34–44 s at load 10, JAX's 10 s), while one thread per framework just gets its time share.

The mask token id comes from the benchmark config on both sides. (A first version took JAX's from
``model.config``: converted from the HF Qwen2-VL config dict, which has no ``mask_token_id``, it held Dream's
default 151666, outside this 32000-token vocabulary; XLA's embedding gather returns NaN rows for an
out-of-range id, so every JAX loss was NaN while torch, given id 3, computed 7.612.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.forward import BATCH, bench_config, build_models, cpu_name, interleaved, make_inputs, model_flops  # noqa: E402
from benchmarks.matmul_peak import _best_seconds, add_malloc_argument, apply_malloc, limit_threads, measure_peak  # noqa: E402

LR, EPS, CART_Q = 1e-5, 1e-3, 0.1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--logits-at", default="all", choices=["all", "targets"],
                   help="JAX: lm_head + softmax at every position (what the objective does, and torch) or only at "
                        "positions that can have a target (the text positions here: 1/3 of the tokens)")
    p.add_argument("--attention-impl", default="xla", choices=["xla", "jax"], help="dreamjax attention kernel")
    p.add_argument("--parts", action="store_true",
                   help="also time JAX's forward and forward + backward of the same step (where the time goes)")
    add_malloc_argument(p)
    p.add_argument("--floor", action="store_true",
                   help="also time every matmul of JAX's step alone at its best layout, and clip + AdamW alone: an "
                        "estimate of the step's matmul share (each timed call also pays its dispatch, ~0.1 ms; "
                        "not a lower bound: a step has measured faster than this sum)")
    return p.parse_args()


def noise(c, ids, seed=0):
    """Labels (text positions maskable), per-row p and the masked positions, drawn once on the host."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.where(ids == c.image_token_id, -100, ids)
    t = rng.random(ids.shape[0])
    p = (1 - EPS) * t + EPS
    masked = (rng.random(ids.shape) < p[:, None]) & (labels != -100)
    return labels.astype(np.int32), p.astype(np.float32), masked


def torch_cart_matrix(n, q=CART_Q):
    """The reference's CART matrix W[i, j] = 0.5·q·(1−q)^(|i−j|−1), W[i, i] = 0 (spec §4)."""
    import torch

    d = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().float()
    w = 0.5 * q * (1 - q) ** (d - 1)
    w.fill_diagonal_(0.0)
    return w


def make_torch_step(hf, x, labels, p, masked, mask_id):
    import numpy as np
    import torch

    opt = torch.optim.AdamW(hf.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ids = torch.from_numpy(np.where(masked, mask_id, x["ids"]).astype(np.int64))
    kw = dict(input_ids=ids, attention_mask=torch.from_numpy(x["mask"]),
              position_ids=torch.from_numpy(x["pos"].astype(np.int64)), pixel_values=torch.from_numpy(x["pixel_values"]),
              image_grid_thw=torch.from_numpy(x["grid"]))
    kept = np.where(masked, labels, -100)
    shifted = torch.from_numpy(np.concatenate([kept[:, 1:], np.full((kept.shape[0], 1), -100)], 1).astype(np.int64))
    loss_mask = shifted != -100
    cart = torch_cart_matrix(ids.shape[1])
    hf.train()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = hf(**kw).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), shifted.clamp(min=0), reduction="none")
        clean = (~loss_mask).float()
        w = (clean @ cart) * loss_mask.float()
        loss = (nll * w * loss_mask).sum() / loss_mask.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        return loss.detach()

    return step


def target_rows(labels):
    """[B, K] positions whose logit can have a target (the next position is maskable), padded with the last
    column (never a target); K = the most such positions in a row. Known from the labels before any noise."""
    import numpy as np

    can = np.zeros(labels.shape, bool)
    can[:, :-1] = labels[:, 1:] != -100
    k = int(can.sum(1).max())
    idx = np.full((labels.shape[0], k), labels.shape[1] - 1, np.int32)
    for b, row in enumerate(can):
        pos = np.flatnonzero(row)
        idx[b, :len(pos)] = pos
    return idx


def _loss_at_target_rows(module, ids, mask, pos, pixels, ppos, pseg, labels, p, masked, idx):
    """Inside ``model.apply``: the objective's loss with the lm_head and softmax run only at ``idx`` (every
    position that can have a target); CART weights and the token count still come from the whole sequence."""
    import jax.numpy as jnp

    from dreamjax.diffusion.objective import IGNORE_INDEX, shift_targets, token_nll, token_weights

    hidden = module.decode(module.embed(ids, module.encode_images(pixels, ppos, pseg)), mask.astype(jnp.int32), pos)
    logits = module.lm_logits(jnp.take_along_axis(hidden, idx[..., None], axis=1))
    targets = shift_targets(labels, masked)
    loss_mask = targets != IGNORE_INDEX
    weights = jnp.take_along_axis(token_weights(loss_mask, p, "cart", CART_Q), idx, axis=1)
    nll = token_nll(logits, jnp.take_along_axis(targets, idx, axis=1))
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(loss_mask), 1)


def step_matmuls(jaxpr, out=None, times=1):
    """{(batch, M, K, N): count} of every ``dot_general`` in a jaxpr, nested jaxprs included (a scan body counts
    ``length`` times, a cond its costliest branch)."""
    import math
    from collections import Counter

    from jax.extend import core as jcore

    out = Counter() if out is None else out
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            a, b = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            size = lambda shape, dims: math.prod(shape[d] for d in dims)  # noqa: E731
            free_a = [d for d in range(len(a)) if d not in lc and d not in lb]
            free_b = [d for d in range(len(b)) if d not in rc and d not in rb]
            out[(size(a, lb), size(a, free_a), size(a, lc), size(b, free_b))] += times
        if eqn.primitive.name == "cond":  # one branch runs (lax.platform_dependent lowers to a cond): the costliest
            options = [step_matmuls(b.jaxpr, None, times) for b in eqn.params["branches"]]
            out.update(max(options, key=lambda c: sum(n * math.prod(k) for k, n in c.items())))
            continue
        inner = times * eqn.params.get("length", 1) if eqn.primitive.name == "scan" else times
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                    step_matmuls(getattr(sub, "jaxpr", sub), out, inner)
    return out


def best_gemm_ms(batch, m, k, n, reps):
    """Best time of an fp32 [batch,] M×K by K×N matmul in JAX, operands already in row-major [M, K]·[K, N] or
    [M, K]·[N, K] (the faster of the two; no transpose is timed)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((batch, m, k), dtype=np.float32))
    best = float("inf")
    for spec, b_shape in (("bmk,bkn->bmn", (batch, k, n)), ("bmk,bnk->bmn", (batch, n, k))):
        b = jnp.asarray(rng.standard_normal(b_shape, dtype=np.float32))
        f = jax.jit(lambda x, y, spec=spec: jnp.einsum(spec, x, y))
        best = min(best, _best_seconds(lambda: f(a, b).block_until_ready(), reps))
    return best * 1e3


def make_jax_step(model, params, x, labels, p, masked, mask_id, logits_at="all"):
    import jax
    import jax.numpy as jnp
    import optax

    from dreamjax.diffusion.objective import masked_diffusion_loss, noise_inputs

    from dreamjax.train.optimizer import clip_by_global_norm

    opt = optax.chain(clip_by_global_norm(1.0), optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    variables = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), {"params": params})  # own the buffers
    state = (variables, opt.init(variables))
    inputs = [jax.device_put(v) for v in (x["ids"], x["mask"], x["pos"], x["jax_pixels"], x["patch_pos"],
                                           x["patch_seg"], labels, p, masked, target_rows(labels))]

    def loss_of(v, ids, mask, pos, pixels, ppos, pseg, labels, p, masked, idx):
        if logits_at == "targets":
            return model.apply(v, noise_inputs(ids, masked, mask_id), mask, pos, pixels, ppos, pseg, labels, p,
                               masked, idx, method=_loss_at_target_rows)
        logits = model.apply(v, noise_inputs(ids, masked, mask_id), mask, pos, pixels, ppos, pseg)
        return masked_diffusion_loss(logits, labels, masked, p, weighting="cart", cart_q=CART_Q)[0]

    def apply_grads(variables, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    def step(state, *batch):
        loss, grads = jax.value_and_grad(loss_of)(state[0], *batch)
        return apply_grads(*state, grads), loss

    compiled = jax.jit(step, donate_argnums=0).lower(state, *inputs).compile()
    box = {"state": state}

    def run():
        box["state"], loss = compiled(box["state"], *inputs)
        return jnp.asarray(loss).block_until_ready()

    def parts():
        """--parts: the forward (loss) and forward + backward of the same step, on the current weights."""
        forward, both = jax.jit(loss_of), jax.jit(jax.value_and_grad(loss_of))
        return {"forward": lambda: forward(box["state"][0], *inputs).block_until_ready(),
                "forward+backward": lambda: jax.block_until_ready(both(box["state"][0], *inputs))}

    def floor(reps):
        """--floor: (ms of the step's matmuls, each alone at its best layout; their GFLOP; ms of clip + AdamW
        alone, state donated; the number of matmuls)."""
        dots = step_matmuls(jax.make_jaxpr(jax.value_and_grad(loss_of))(box["state"][0], *inputs).jaxpr)
        dot_ms, dot_flops = 0.0, 0.0
        for (batch, m, k, n), count in dots.items():
            dot_ms += count * best_gemm_ms(batch, m, k, n, reps)
            dot_flops += count * 2.0 * batch * m * k * n
        grads = jax.tree_util.tree_map(jnp.ones_like, box["state"][0])
        apply = jax.jit(apply_grads, donate_argnums=(0, 1))
        own = {"state": jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), box["state"])}

        def optimizer_step():  # the state is donated: each call steps the previous call's output
            own["state"] = jax.block_until_ready(apply(*own["state"], grads))

        return dot_ms, dot_flops, _best_seconds(optimizer_step, reps) * 1e3, sum(dots.values())

    run.floor = floor
    run.state_pointers = lambda: {a.unsafe_buffer_pointer() for a in jax.tree_util.tree_leaves(box["state"])}
    run.parts = parts
    return run


def main() -> None:
    args = parse_args()
    threads = limit_threads(args.threads)
    apply_malloc(args.malloc)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    c = bench_config()
    x = make_inputs(c)
    hf, model, params = build_models(c, args.dtype)
    model = type(model)(model.config.replace(attention_impl=args.attention_impl))
    labels, p, masked = noise(c, x["ids"])
    t0 = time.perf_counter()
    # Both sides take the mask id from the benchmark config, not model.config (151666 there; see the docstring).
    run_jax = make_jax_step(model, params, x, labels, p, masked, c.mask_token_id, args.logits_at)
    compile_s = time.perf_counter() - t0
    run_torch = make_torch_step(hf, x, labels, p, masked, c.mask_token_id)
    # The state is donated and torch steps its weights in place: no JAX buffer may alias a torch parameter
    # (``device_put`` of a torch tensor's numpy view on CPU aliases it; ``make_jax_step`` copies).
    shared = run_jax.state_pointers() & {t.data_ptr() for t in hf.parameters()}
    if shared:
        raise RuntimeError(f"{len(shared)} JAX state buffers alias torch parameters")
    first = (float(run_jax()), float(run_torch()))  # the same first-step loss = the same work
    patches = [int(np.prod(g)) for g in x["grid"]]
    parts = model_flops(c, x["ids"].shape[1], BATCH, patches)
    flops = 3 * parts["total"]  # the work torch does (and JAX with --logits-at all)
    if args.logits_at == "targets":  # MFU counts only the work JAX does: lm_head on K of S rows
        jax_flops = flops - 3 * parts["lm_head"] * (1 - target_rows(labels).shape[1] / x["ids"].shape[1])
    else:
        jax_flops = flops
    load = os.getloadavg()[0]
    times = interleaved({"jax": run_jax, "torch": run_torch}, args.repeats, args.warmup)
    peak = max(measure_peak(args.peak_size).values())
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"\nDream-VL train step on {cpu_name()}: batch {BATCH} x S={x['ids'].shape[1]}, {sum(patches)} ViT patches; "
          f"JAX dtype {args.dtype}; {threads} threads; load avg before timing {load:.2f}")
    print(f"first-step loss jax {first[0]:.6f} torch {first[1]:.6f}; JAX compile {compile_s:.1f} s; "
          f"step FLOPs {flops / 1e9:.1f} G (JAX with --logits-at {args.logits_at}: {jax_flops / 1e9:.1f} G); "
          f"fp32 matmul peak {peak:.1f} GFLOP/s")
    work = {"jax": jax_flops, "torch": flops}
    print(f"\n{'':7}{'median ms':>10}{'min ms':>8}{'GFLOP/s':>9}{'MFU':>7}{'MFU@min':>9}")
    for k in ("jax", "torch"):
        print(f"{k:7}{med[k] * 1e3:10.1f}{best[k] * 1e3:8.1f}{work[k] / med[k] / 1e9:9.1f}"
              f"{work[k] / med[k] / 1e9 / peak:7.1%}{work[k] / best[k] / 1e9 / peak:9.1%}")
    print(f"{'jax/torch':10}{med['jax'] / med['torch']:7.3f}{best['jax'] / best['torch']:8.3f}")
    if args.parts:  # the forward is a third of the step's model FLOPs, the backward two thirds
        part_times = interleaved(run_jax.parts(), args.repeats, args.warmup)
        part_flops = {"forward": jax_flops / 3, "forward+backward": jax_flops}
        print(f"\nJAX step pieces (same weights and inputs): {'median ms':>10}{'min ms':>8}{'GFLOP/s at min':>16}")
        for name, ts in part_times.items():
            print(f"{name:43}{statistics.median(ts) * 1e3:10.1f}{min(ts) * 1e3:8.1f}"
                  f"{part_flops[name] / min(ts) / 1e9:16.1f}")
        backward = min(part_times["forward+backward"]) - min(part_times["forward"])
        print(f"{'backward (difference of the mins)':43}{'':10}{backward * 1e3:8.1f}"
              f"{2 * jax_flops / 3 / backward / 1e9:16.1f}")
    floor = {}
    if args.floor:  # what the step would take if its matmuls were all it did (plus the memory-bound optimizer)
        dot_ms, dot_flops, opt_ms, n_dots = run_jax.floor(max(args.repeats, 10))
        floor = dict(floor_dot_ms=dot_ms, floor_opt_ms=opt_ms, floor_dot_gflop=dot_flops / 1e9,
                     floor_mfu_dots=jax_flops / dot_ms / 1e6 / peak, floor_mfu=jax_flops / (dot_ms + opt_ms) / 1e6 / peak)
        print(f"\nMatmul share: the step's {n_dots} matmuls ({dot_flops / 1e9:.1f} GFLOP), each alone at its best layout: "
              f"{dot_ms:.1f} ms = {dot_flops / dot_ms / 1e6:.1f} GFLOP/s; clip + AdamW alone (donated): {opt_ms:.1f} ms")
        print(f"  MFU at these times, matmuls only: {floor['floor_mfu_dots']:.1%}; "
              f"matmuls + optimizer: {floor['floor_mfu']:.1%} (measured step at min: "
              f"{jax_flops / best['jax'] / 1e9 / peak:.1%})")
    print(json.dumps(dict(benchmark="train_step", malloc=args.malloc, dtype=args.dtype, attention_impl=args.attention_impl, threads=threads, load=load, loss_jax=first[0],
                          loss_torch=first[1], jax_ms_median=med["jax"] * 1e3, torch_ms_median=med["torch"] * 1e3,
                          jax_ms_min=best["jax"] * 1e3, torch_ms_min=best["torch"] * 1e3,
                          ratio_median=med["jax"] / med["torch"], ratio_min=best["jax"] / best["torch"],
                          logits_at=args.logits_at, gflop_per_step=flops / 1e9, jax_gflop_per_step=jax_flops / 1e9,
                          peak_gflops=peak, mfu_jax=jax_flops / med["jax"] / 1e9 / peak,
                          mfu_torch=flops / med["torch"] / 1e9 / peak, **floor)))


if __name__ == "__main__":
    main()
