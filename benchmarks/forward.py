"""Forward pass of a small Dream-VL, dreamjax (jit) vs PyTorch (transformers Qwen2-VL, bidirectional), same run.

    python benchmarks/forward.py [--repeats 20] [--threads 2] [--dtype float32] [--breakdown] [--malloc reuse|default]

Model (fp32): LLM 4 layers, hidden 512, 8 heads / 2 kv heads, MLP 1408, vocab 32000; ViT depth 4, width 256,
4 heads, MLP 1024, merger → 512. Batch 2; each sample holds two 224×224 images (image processor → grid
(1, 16, 16): 256 patches, 64 LLM tokens each) and 64 text tokens, so S = 192 and the ViT sees 4·256 patches.
Both frameworks get the same weights (transformers state dict → ``conversion.keymap.hf_to_params``) and the
same inputs; the logits are compared so both sides do the same work.

Timing: JAX is compiled once and warmed up; torch runs under ``inference_mode``. The two are timed
*interleaved* (jax, torch, jax, torch, …) so background load on a shared machine hits both alike; median
and min are reported (under load trust the min: torch's OpenMP suffers more than XLA's pool). Both use
``--threads`` cores: the process is pinned to them (XLA's CPU thread pool follows the affinity mask) and
``torch.set_num_threads`` matches. MFU = model FLOP/s ÷ the best measured fp32
matmul peak (``matmul_peak.py``). The last line is one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root: tests.tiny, conversion
from benchmarks.matmul_peak import add_malloc_argument, apply_malloc, limit_threads, measure_peak  # noqa: E402

BATCH, IMAGES_PER_SAMPLE, IMAGE_PX, TEXT_TOKENS = 2, 2, 224, 64


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="timed runs per framework (median and min reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="cores for both frameworks (default 2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    p.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak measurement")
    p.add_argument("--breakdown", action="store_true", help="also time ViT / LLM / lm_head separately")
    p.add_argument("--vit-layout", default="rows", choices=["rows", "flat"],
                   help="JAX ViT input: row-packed (per-image attention, what DreamVL uses) or the flat "
                        "reference layout (all patches in one block-masked sequence)")
    add_malloc_argument(p)
    return p.parse_args()


def bench_config():
    from dreamjax.models.config import DreamVLConfig, VisionConfig
    from tests.tiny import IDS

    return DreamVLConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, mrope_section=(8, 12, 12), rope_theta=1e6, max_position_embeddings=4096,
        vision=VisionConfig(depth=4, embed_dim=256, num_heads=4, mlp_ratio=4.0, hidden_size=512),
        model_type="qwen2_vl", use_projector=False, **IDS).validate()


def model_flops(c, seq_len: int, batch: int, patches_per_image: list[int]) -> dict[str, float]:
    """Analytic forward FLOPs, 2·m·n·k per matmul (elementwise ops, norms, softmax not counted).

    ViT (N = Σ n_i patches, E embed, P = 1176 patch row, M mlp, depth L_v), attention per image (n_i²):
      patch_embed 2·N·P·E
      per block   qkv 2·N·E·3E + scores 2·Σn_i²·E + PV 2·Σn_i²·E + proj 2·N·E·E + mlp 2·2·N·E·M
      merger      2·(N/4)·4E·4E + 2·(N/4)·4E·D
    LLM (T = B·S tokens, D hidden, H heads × hd, K kv heads, I mlp, L layers, V vocab):
      per layer   q 2·T·D·H·hd + k,v 2·2·T·D·K·hd + o 2·T·H·hd·D + scores 2·B·S²·H·hd + PV 2·B·S²·H·hd
                  + mlp (gate, up, down) 3·2·T·D·I
      lm_head     2·T·D·V
    """
    v = c.vision
    n, e, nn2 = sum(patches_per_image), v.embed_dim, sum(p * p for p in patches_per_image)
    block = 2 * n * e * 3 * e + 2 * 2 * nn2 * e + 2 * n * e * e + 2 * 2 * n * e * v.mlp_dim
    vit = 2 * n * v.patch_dim * e + v.depth * block + 2 * (n // 4) * v.merged_dim * (v.merged_dim + v.hidden_size)
    t, d, hd = batch * seq_len, c.hidden_size, c.head_dim
    h, k = c.num_attention_heads, c.num_key_value_heads
    layer = (2 * t * d * h * hd + 2 * 2 * t * d * k * hd + 2 * t * h * hd * d + 2 * 2 * batch * seq_len**2 * h * hd
             + 3 * 2 * t * d * c.intermediate_size)
    llm = c.num_hidden_layers * layer
    head = 2 * t * d * c.vocab_size
    return {"vit": vit, "llm": llm, "lm_head": head, "total": vit + llm + head}


def make_inputs(c, seed: int = 0, vit_layout: str = "rows"):
    """Token ids, mask, position ids and image patches for BATCH samples: text, image, text, image, text."""
    import numpy as np

    from dreamjax.data.image_processor import num_image_tokens, preprocess
    from dreamjax.models.positions import pack_pixel_rows, text_position_ids, vision_patch_layout, vision_patch_rows

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8) for _ in range(BATCH * IMAGES_PER_SAMPLE)]
    pixel_values, grid = preprocess(images, min_pixels=IMAGE_PX**2, max_pixels=IMAGE_PX**2)
    tokens_per_image = num_image_tokens(grid)
    text = lambda n: list(rng.integers(20, c.vocab_size, n))  # noqa: E731
    cuts = [TEXT_TOKENS // 3, TEXT_TOKENS // 3, TEXT_TOKENS - 2 * (TEXT_TOKENS // 3)]
    rows = []
    for b in range(BATCH):
        row = text(cuts[0])
        for i in range(IMAGES_PER_SAMPLE):
            row += [c.image_token_id] * tokens_per_image[b * IMAGES_PER_SAMPLE + i] + text(cuts[i + 1])
        rows.append(row)
    ids = np.asarray(rows, np.int64)
    mask = np.ones_like(ids)
    if vit_layout == "rows":
        gather, patch_pos, patch_seg = vision_patch_rows(grid)
        jax_pixels = pack_pixel_rows(pixel_values, gather, patch_seg.shape[1])
    else:
        (patch_pos, patch_seg), jax_pixels = vision_patch_layout(grid), pixel_values
    return dict(ids=ids, mask=mask, pos=text_position_ids(mask), pixel_values=pixel_values, grid=grid,
                jax_pixels=jax_pixels, patch_pos=patch_pos, patch_seg=patch_seg)


def build_models(c, dtype: str):
    """transformers Qwen2-VL (bidirectional, random non-trivial weights) and the same weights for dreamjax."""
    import torch
    import transformers

    from conversion.keymap import hf_to_params
    from dreamjax.models.config import DreamVLConfig
    from dreamjax.models.dream_vl import DreamVLModel
    from tests.tiny import hf_qwen2vl_config_dict, randomize_torch_

    hf_cfg = transformers.Qwen2VLConfig(**hf_qwen2vl_config_dict(c))
    hf_cfg.text_config.is_causal = False  # Dream: bidirectional decoder
    torch.manual_seed(0)
    hf = transformers.Qwen2VLForConditionalGeneration(hf_cfg).eval()
    randomize_torch_(hf, seed=1)
    cfg = DreamVLConfig.from_hf_dict(hf.config.to_dict(), dtype=dtype)
    sd = {k: t.detach().numpy() for k, t in hf.state_dict().items()}
    return hf, DreamVLModel(cfg), hf_to_params(sd, sd.keys(), cfg, source="transformers Qwen2-VL")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Run each fn ``warmup`` times, then ``repeats`` rounds of one call each (round-robin); seconds per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def main() -> None:
    args = parse_args()
    threads = limit_threads(args.threads)  # before numpy/torch/jax create their thread pools
    apply_malloc(args.malloc)

    import jax
    import numpy as np
    import torch

    from tests.tiny import rel_err

    torch.set_num_threads(threads)
    c = bench_config()
    x = make_inputs(c, vit_layout=args.vit_layout)
    hf, model, params = build_models(c, args.dtype)
    params = jax.device_put(params)
    patches = [int(np.prod(g)) for g in x["grid"]]
    flops = model_flops(c, x["ids"].shape[1], BATCH, patches)

    # ---- JAX: compile once (AOT, so cost_analysis reads the executable we time)
    jx = [jax.device_put(x[k]) for k in ("ids", "mask", "pos", "jax_pixels", "patch_pos", "patch_seg")]
    t0 = time.perf_counter()
    compiled = jax.jit(model.apply).lower({"params": params}, *jx).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))
    run_jax = lambda: compiled({"params": params}, *jx).block_until_ready()  # noqa: E731

    # ---- torch
    tx = dict(input_ids=torch.from_numpy(x["ids"]), attention_mask=torch.from_numpy(x["mask"]),
              position_ids=torch.from_numpy(x["pos"].astype(np.int64)),
              pixel_values=torch.from_numpy(x["pixel_values"]), image_grid_thw=torch.from_numpy(x["grid"]))

    def run_torch():
        with torch.inference_mode():
            return hf(**tx).logits

    # ---- same work? (logits at every position; no padding here)
    ref = run_torch().numpy()
    err = rel_err(np.asarray(run_jax(), np.float32), ref)

    load_before = os.getloadavg()[0]
    times = interleaved({"jax": run_jax, "torch": run_torch}, args.repeats, args.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least-disturbed run: the one to trust on a shared machine
    peak = measure_peak(args.peak_size)
    best_peak = max(peak.values())
    breakdown = breakdown_times(hf, model, params, x, tx, args) if args.breakdown else None

    # ---- report
    tokens, s_len = x["ids"].size, x["ids"].shape[1]
    print(f"\nDream-VL forward on {cpu_name()}: batch {BATCH} x S={s_len} ({IMAGES_PER_SAMPLE} x {IMAGE_PX}px images "
          f"+ {TEXT_TOKENS} text tokens per sample), ViT {sum(patches)} patches; JAX dtype {args.dtype}")
    print(f"threads {threads}: torch.get_num_threads()={torch.get_num_threads()}, XLA CPU pool sized by the "
          f"affinity mask ({len(os.sched_getaffinity(0))} cores); load avg before timing {load_before:.2f}")
    if load_before > threads:
        print(f"WARNING: other processes are using this machine (load {load_before:.1f} > {threads} threads): "
              "medians are disturbed, prefer the min column")
    print(f"model FLOPs {flops['total'] / 1e9:.2f} G (ViT {flops['vit'] / 1e9:.2f}, LLM {flops['llm'] / 1e9:.2f}, "
          f"lm_head {flops['lm_head'] / 1e9:.2f}); XLA cost_analysis {xla_flops / 1e9:.2f} G "
          f"({xla_flops / flops['total']:.2f}x model)")
    print("fp32 matmul peak, " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()) +
          f" GFLOP/s (n={args.peak_size}) -> MFU denominator {best_peak:.1f}")
    print(f"logits max rel err (jax vs torch): {err:.2e}; JAX compile {compile_s:.1f} s; "
          f"{args.repeats} interleaved runs")
    print(f"\n{'':7}{'median ms':>10}{'min ms':>8}{'tok/s':>7}{'GFLOP/s':>9}{'MFU':>7}{'MFU@min':>9}")
    for k in ("jax", "torch"):
        gf = flops["total"] / med[k] / 1e9
        print(f"{k:7}{med[k] * 1e3:10.1f}{best[k] * 1e3:8.1f}{tokens / med[k]:7.0f}{gf:9.1f}{gf / best_peak:7.1%}"
              f"{flops['total'] / best[k] / 1e9 / best_peak:9.1%}")
    ratio, ratio_min = med["jax"] / med["torch"], best["jax"] / best["torch"]
    print(f"JAX/torch  {ratio:.3f} (median)  {ratio_min:.3f} (min)   goal <= 0.8")
    if breakdown:
        print("\nstage      jax min/median ms    torch min/median ms    jax/torch (min)")
        for stage in ("vit", "llm", "lm_head"):
            j, t = breakdown[f"jax_{stage}"], breakdown[f"torch_{stage}"]
            print(f"{stage:8}{j[0]:10.1f} /{j[1]:7.1f}{t[0]:14.1f} /{t[1]:7.1f}{j[0] / t[0]:17.2f}")
    print(json.dumps({"malloc": args.malloc,
        "bench": "forward", "cpu": cpu_name(), "dtype": args.dtype, "threads": threads, "batch": BATCH,
        "seq_len": s_len, "vit_patches": sum(patches), "model_gflop": round(flops["total"] / 1e9, 3),
        "xla_gflop": round(xla_flops / 1e9, 3), "jax_ms": round(med["jax"] * 1e3, 2),
        "torch_ms": round(med["torch"] * 1e3, 2), "ratio": round(ratio, 3), "jax_min_ms": round(best["jax"] * 1e3, 2),
        "torch_min_ms": round(best["torch"] * 1e3, 2), "ratio_min": round(ratio_min, 3),
        "mfu": {k: round(flops["total"] / med[k] / 1e9 / best_peak, 4) for k in med},
        "peak_gflops": {k: round(v, 1) for k, v in peak.items()}, "max_rel_err": float(f"{err:.3g}"),
        "load_avg": round(load_before, 2), "breakdown_ms_min_median": breakdown}))


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    return f"{name}, {os.cpu_count()} cores"


def breakdown_times(hf, model, params, x, tx, args) -> dict:
    """[min, median] ms of the three stages on each side: ViT (+merger), decoder, lm_head."""
    import jax
    import numpy as np
    import torch

    from dreamjax.models.dream_vl import DreamVLModel

    p = {"params": params}
    enc = jax.jit(lambda p, pv, pp, ps: model.apply(p, pv, pp, ps, method=DreamVLModel.encode_images))
    dec = jax.jit(lambda p, e, s, pos: model.apply(p, e, s, pos, method=DreamVLModel.decode))
    head = jax.jit(lambda p, h: model.apply(p, h, method=DreamVLModel.lm_logits))
    feats = enc(p, x["jax_pixels"], x["patch_pos"], x["patch_seg"])
    emb = jax.jit(lambda p, i, f: model.apply(p, i, f, method=DreamVLModel.embed))(p, x["ids"], feats)
    hid = dec(p, emb, x["mask"].astype("int32"), x["pos"])
    lm = hf.model.language_model
    with torch.inference_mode():
        t_emb = torch.from_numpy(np.array(emb))
        t_hid = torch.from_numpy(np.array(hid))
        grid = tx["image_grid_thw"]
        fns = {
            "jax_vit": lambda: enc(p, x["jax_pixels"], x["patch_pos"], x["patch_seg"]).block_until_ready(),
            "torch_vit": lambda: hf.model.visual(tx["pixel_values"], grid_thw=grid),
            "jax_llm": lambda: dec(p, emb, x["mask"].astype("int32"), x["pos"]).block_until_ready(),
            "torch_llm": lambda: lm(inputs_embeds=t_emb, attention_mask=tx["attention_mask"],
                                    position_ids=tx["position_ids"]),
            "jax_lm_head": lambda: head(p, hid).block_until_ready(),
            "torch_lm_head": lambda: hf.lm_head(t_hid),
        }
        times = interleaved(fns, args.repeats, args.warmup)
    return {k: [round(min(v) * 1e3, 1), round(statistics.median(v) * 1e3, 1)] for k, v in times.items()}


if __name__ == "__main__":
    main()
