"""Diffusion generation latency of a small Dream-VL: ``DreamVL.generate`` vs the same loop over PyTorch, same run.

    python benchmarks/generate.py [--steps 64 8] [--repeats 5] [--threads 2] [--new-tokens 64] [--malloc reuse|default]

Model: the small fp32 config of ``forward.py`` (LLM 4 layers, hidden 512, 8/2 heads, MLP 1408, vocab 32000;
ViT depth 4, width 256), same random weights on both sides (transformers Qwen2-VL with
``text_config.is_causal=False`` → ``conversion.keymap.hf_to_params``). Batch 1; the prompt is text,
``<vision_start>``, one 224×224 image (64 image-pad tokens), ``<vision_end>``, text: 40 text/special tokens
+ 64 image pads = 104 prompt tokens; 64 new tokens → canvas S = 168. alg ``maskgit_plus``, temperature 0.

The torch side is the reference generator loop (spec §5.2, HF Dream-VL generator (B)) written out over
transformers' modules: mask canvas; ``timesteps = linspace(1, eps, steps + 1)``; vision tower once and an
``inputs_embeds`` cache whose rows are overwritten with ``embed_tokens(x)`` at the positions that were masked
at the start of the step; per step one full bidirectional forward of the canvas (language model with
``inputs_embeds`` + ``lm_head`` over every position, as the reference's ``model(...).logits``), the shift
``cat(logits[:, :1], logits[:, :-1])``, softmax → (max prob, argmax) at the masked positions,
``n = int(M·(1 − s/t))`` (M at the last step) and ``topk`` of the confidences. Position ids are computed
with ``get_rope_index`` every step as (B) does (``--static-positions``: once).

Both outputs must be equal token for token (reported; on a mismatch the first divergent step is located
with ``output_history`` and the confidence / argmax margins there are printed). Timing is interleaved
(jax, torch, jax, …); JAX's first call (trace + compile, paid once per shape and setting) is reported
separately. FLOPs are analytic (``forward.model_flops``): the ViT once + per step one forward of the canvas
with ``lm_head`` over all S positions (the reference's work); dreamjax runs ``lm_head`` only over the
generated window. GFLOP/s and MFU use the FLOPs each side executes (dreamjax: window lm_head), MFU against
the measured fp32 matmul peak (``matmul_peak.measure_peak``, same run). Last line: one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
from benchmarks.forward import bench_config, build_models, cpu_name, interleaved, model_flops, timed  # noqa: E402
from benchmarks.matmul_peak import add_malloc_argument, apply_malloc, limit_threads, measure_peak  # noqa: E402

IMAGE_PX, TEXT_BEFORE, TEXT_AFTER = 224, 19, 19  # + vision_start/end = 40 non-image prompt tokens


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[64, 8])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per framework and setting")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--static-positions", action="store_true",
                   help="torch: compute position ids once instead of every step")
    add_malloc_argument(p)
    return p.parse_args()


def make_prompt(c, seed: int = 0):
    import numpy as np

    from dreamjax.data.image_processor import num_image_tokens, preprocess

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    pixel_values, grid = preprocess([image], min_pixels=IMAGE_PX**2, max_pixels=IMAGE_PX**2)
    text = lambda n: list(rng.integers(20, c.vocab_size, n))  # noqa: E731
    row = ([c.bos_token_id] + text(TEXT_BEFORE - 1) + [c.vision_start_token_id]
           + [c.image_token_id] * int(num_image_tokens(grid)[0]) + [c.vision_end_token_id] + text(TEXT_AFTER))
    return np.asarray([row], np.int64), pixel_values, grid


# --------------------------------------------------------------------------------------------- torch reference loop
class TorchDreamLoop:
    """Spec §5.2 / §5.3 (B) over a transformers Qwen2-VL (bidirectional), temperature 0, maskgit_plus."""

    def __init__(self, hf, mask_id: int, static_positions: bool = False):
        self.hf, self.mask_id, self.static_positions = hf, mask_id, static_positions

    def positions(self, x, attn, grid):
        """M-RoPE ids as transformers computes them (text 0 / image 1 token types from the canvas)."""
        types = (x == self.hf.config.image_token_id).int()
        return self.hf.model.get_rope_index(x, types, image_grid_thw=grid, attention_mask=attn)[0]

    def __call__(self, ids, pixel_values, grid, *, max_new: int, steps: int, eps: float = 1e-3, history=None):
        import torch
        import torch.nn.functional as F

        hf = self.hf
        with torch.inference_mode():
            x = F.pad(ids, (0, max_new), value=self.mask_id)
            attn = torch.ones_like(x)
            timesteps = torch.linspace(1, eps, steps + 1)
            emb_table = hf.model.get_input_embeddings()
            embeds = emb_table(x)
            feats = torch.cat(hf.model.get_image_features(pixel_values, grid).pooler_output, 0)  # ViT: once
            embeds = embeds.masked_scatter((x == hf.config.image_token_id)[..., None].expand_as(embeds), feats)
            pos = self.positions(x, attn, grid)
            for i in range(steps):
                mask_index = x == self.mask_id
                if not self.static_positions and i:
                    pos = self.positions(x, attn, grid)
                hidden = hf.model.language_model(inputs_embeds=embeds, attention_mask=attn,
                                                 position_ids=pos).last_hidden_state
                logits = hf.lm_head(hidden)
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
                mask_logits = logits[mask_index]
                t, s = timesteps[i], timesteps[i + 1]
                probs = torch.softmax(mask_logits.float(), dim=-1)
                confidence, x0 = probs.max(dim=-1)
                num_mask = mask_index.sum()
                n = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)
                full_conf = torch.full(x.shape, -torch.inf, dtype=confidence.dtype)
                full_conf[mask_index] = confidence
                x_ = torch.full_like(x, self.mask_id)
                x_[mask_index] = x0
                if n > 0:
                    _, transfer = torch.topk(full_conf.view(-1), n)
                    x.view(-1)[transfer] = x_.view(-1)[transfer]
                embeds[mask_index] = emb_table(x[mask_index])  # HF generator's embedding cache
                if history is not None:
                    history.append(dict(x=x.clone().numpy(), conf=full_conf.numpy().copy(), n=n,
                                        probs=probs.numpy().copy()))
            return x


def divergence_report(jax_hist, torch_hist, mask_id: int) -> str:
    """First step where the canvases differ, with the torch-side margins that decide it."""
    import numpy as np

    for i, (jx, th) in enumerate(zip(jax_hist, torch_hist)):
        if not np.array_equal(np.asarray(jx), th["x"]):
            diff = np.flatnonzero(np.asarray(jx)[0] != th["x"][0]).tolist()
            conf = np.sort(th["conf"][0][np.isfinite(th["conf"][0])])[::-1]
            n = th["n"]
            gap = float(conf[n - 1] - conf[n]) if 0 < n < len(conf) else float("nan")
            p = np.sort(th["probs"], -1)
            arg_gap = float((p[:, -1] - p[:, -2]).min())
            return (f"first divergent step {i} at positions {diff[:8]}: torch reveals n={n}, confidence gap between "
                    f"the n-th and (n+1)-th masked position {gap:.3g}; smallest top1-top2 prob gap {arg_gap:.3g}")
    return "histories equal (final canvases differ?)"


def main() -> None:
    args = parse_args()
    threads = limit_threads(args.threads)
    apply_malloc(args.malloc)

    import jax
    import numpy as np
    import torch

    from dreamjax.pretrained import DreamVL

    torch.set_num_threads(threads)
    c = bench_config()
    ids, pixel_values, grid = make_prompt(c)
    hf, module, params = build_models(c, "float32")
    from tests.tiny import IDS

    # transformers' config carries no mask id: take the special ids of bench_config (mask 3, EOS 2, …)
    dv = DreamVL(module.config.replace(**IDS), {"params": jax.device_put(params)})
    loop = TorchDreamLoop(hf, c.mask_token_id, args.static_positions)
    t_ids, t_pv, t_grid = torch.from_numpy(ids), torch.from_numpy(pixel_values), torch.from_numpy(grid)
    prompt_len, new = ids.shape[1], args.new_tokens
    s_len = prompt_len + new
    f = model_flops(c, s_len, 1, [int(np.prod(g)) for g in grid])
    peak = measure_peak(args.peak_size)  # measured again after the timing: the better of the two counts

    results = []
    for steps in args.steps:
        gen = dict(max_new_tokens=new, steps=steps, alg="maskgit_plus", temperature=0.0)
        run_jax = lambda: np.asarray(dv.generate(ids, None, pixel_values, grid, **gen))  # noqa: E731
        run_torch = lambda: loop(t_ids, t_pv, t_grid, max_new=new, steps=steps)  # noqa: E731
        first_s = timed(run_jax)  # trace + compile + one run
        out_j, out_t = run_jax(), run_torch().numpy()
        same = bool(np.array_equal(out_j, out_t))
        n_diff = int((out_j != out_t).sum())
        why = None
        if not same:
            th = []
            loop(t_ids, t_pv, t_grid, max_new=new, steps=steps, history=th)
            _, jh = dv.generate(ids, None, pixel_values, grid, output_history=True, **gen)
            why = divergence_report(np.asarray(jh), th, c.mask_token_id)
        load = os.getloadavg()[0]
        times = interleaved({"jax": run_jax, "torch": run_torch}, args.repeats, args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        ref_flops = f["vit"] + steps * (f["llm"] + f["lm_head"])
        jax_flops = f["vit"] + steps * (f["llm"] + f["lm_head"] * new / s_len)
        results.append(dict(steps=steps, same=same, n_diff=n_diff, why=why, first_s=first_s,
                            compile_s=first_s - med["jax"], med=med, best=best, load=load,
                            ref_gflop=ref_flops / 1e9, jax_gflop=jax_flops / 1e9))

    peak = {k: max(v, peak[k]) for k, v in measure_peak(args.peak_size).items()}
    best_peak = max(peak.values())

    # ---- report
    print(f"\nDream-VL diffusion generate on {cpu_name()}, {threads} threads; batch 1, prompt {prompt_len} tokens "
          f"(64 image pads), {new} new tokens, canvas S={s_len}; maskgit_plus, temperature 0, fp32")
    print(f"one canvas forward: LLM {f['llm'] / 1e9:.2f} + lm_head {f['lm_head'] / 1e9:.2f} GFLOP (dreamjax lm_head "
          f"over the {new}-token window: {f['lm_head'] * new / s_len / 1e9:.2f}); ViT once {f['vit'] / 1e9:.2f}")
    print("fp32 matmul peak " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()) + f" GFLOP/s -> {best_peak:.1f}")
    if any(r["load"] > threads for r in results):
        print(f"WARNING: load average above {threads}: other processes share the cores; torch's OpenMP degrades far "
              "more than XLA under load (medians flatter JAX), prefer the min columns or rerun when idle")
    print(f"torch positions: {'once' if args.static_positions else 'get_rope_index every step (as (B))'}")
    print(f"\n{'steps':>5} {'':6}{'median ms':>10}{'min ms':>9}{'tok/s':>7}{'ms/step':>8}{'GFLOP/s':>8}{'MFU':>7}"
          f"{'MFU@min':>8}   first call s")
    for r in results:
        for k in ("jax", "torch"):
            done = r["jax_gflop"] if k == "jax" else r["ref_gflop"]  # FLOPs each side executes
            gf = done / r["med"][k]
            first = f"   {r['first_s']:.1f} (compile ~{r['compile_s']:.1f})" if k == "jax" else ""
            print(f"{r['steps']:>5} {k:6}{r['med'][k] * 1e3:10.1f}{r['best'][k] * 1e3:9.1f}{new / r['med'][k]:7.1f}"
                  f"{r['med'][k] / r['steps'] * 1e3:8.1f}{gf:8.1f}{gf / best_peak:7.1%}"
                  f"{done / r['best'][k] / best_peak:8.1%}{first}")
        print(f"{r['steps']:>5} JAX/torch {r['med']['jax'] / r['med']['torch']:.3f} (median) "
              f"{r['best']['jax'] / r['best']['torch']:.3f} (min)   goal <= 0.8; token-identical: {r['same']}"
              + ("" if r["same"] else f" ({r['n_diff']} differ) — {r['why']}") + f"; load {r['load']:.2f}")
    print(json.dumps({"malloc": args.malloc,
        "bench": "generate", "cpu": cpu_name(), "threads": threads, "prompt_len": prompt_len, "new_tokens": new,
        "canvas": s_len, "peak_gflops": {k: round(v, 1) for k, v in peak.items()},
        "static_positions": args.static_positions,
        "runs": [{"steps": r["steps"], "token_identical": r["same"], "n_diff": r["n_diff"],
                  "jax_ms": round(r["med"]["jax"] * 1e3, 1), "torch_ms": round(r["med"]["torch"] * 1e3, 1),
                  "jax_min_ms": round(r["best"]["jax"] * 1e3, 1), "torch_min_ms": round(r["best"]["torch"] * 1e3, 1),
                  "ratio": round(r["med"]["jax"] / r["med"]["torch"], 3),
                  "ratio_min": round(r["best"]["jax"] / r["best"]["torch"], 3),
                  "jax_first_call_s": round(r["first_s"], 2), "ref_gflop": round(r["ref_gflop"], 2),
                  "jax_gflop": round(r["jax_gflop"], 2),
                  "mfu": {"jax": round(r["jax_gflop"] / r["med"]["jax"] / best_peak, 4),
                          "torch": round(r["ref_gflop"] / r["med"]["torch"] / best_peak, 4)},
                  "load_avg": round(r["load"], 2), "divergence": r["why"]} for r in results]}))


if __name__ == "__main__":
    main()
