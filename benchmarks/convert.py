"""Conversion memory and throughput: convert a synthetic multi-GB HF checkpoint (many tensors, one large
embedding) with `dreamjax convert` and back with `dreamjax export`, each in a fresh process, and report
peak RSS ÷ the largest tensor and seconds per GB. A third process that only imports jax + the converter
measures the fixed overhead. Goal: peak RSS ≤ 3 × the largest tensor + the fixed overhead.

    python benchmarks/convert.py [--vocab 262144] [--hidden 1024] [--layers 12] [--workdir /tmp/dj_convert_bench]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_synthetic(path: Path, vocab: int, hidden: int, layers: int, heads: int = 16) -> dict:
    """A text-only Dream config (Qwen2 keys) with random fp32 tensors, 2 GB shards + index."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from conversion.keymap import expected_hf_keys, hf_to_target
    from conversion.safetensors_io import save_file
    from dreamjax.models.config import DreamVLConfig

    cfg = dict(model_type="Dream", vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 4,
               rope_theta=1e6, rms_norm_eps=1e-6, mask_token_id=vocab - 1, torch_dtype="float32")
    config = DreamVLConfig.from_hf_dict(cfg)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    kv = hidden // heads * (heads // 4)
    shapes = {}
    for k in expected_hf_keys(config):
        t = hf_to_target(k, config)
        name = t.path[-2] if t.path[-1] in ("kernel", "bias", "scale", "embedding") else t.path[-1]
        out = {"embed_tokens": vocab, "lm_head": vocab, "k_proj": kv, "v_proj": kv, "gate_proj": 4 * hidden,
               "up_proj": 4 * hidden}.get(name, hidden)
        if k.endswith("bias") or "norm" in k:
            shapes[k] = (out,)
        elif name == "down_proj":
            shapes[k] = (hidden, 4 * hidden)
        else:
            shapes[k] = (out, hidden)
    shard, shard_bytes, shards, limit = {}, 0, [], 2 * 1024**3
    for k, s in shapes.items():
        arr = rng.standard_normal(s, dtype=np.float32)
        if shard and shard_bytes + arr.nbytes > limit:
            shards.append(shard)
            shard, shard_bytes = {}, 0
        shard[k] = arr
        shard_bytes += arr.nbytes
    shards.append(shard)
    weight_map = {}
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, path / name)
        weight_map.update({k: name for k in sh})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sizes = [math.prod(s) * 4 for s in shapes.values()]
    return dict(tensors=len(shapes), total_bytes=sum(sizes), largest_bytes=max(sizes))


MEASURE = """
import resource, runpy, sys
mode, target, *argv = sys.argv[1:]
sys.argv = [target, *argv]
try:
    if mode == "module":
        runpy.run_module(target, run_name="__main__")
    else:
        exec(target)
except SystemExit as e:
    if e.code:
        raise
print("PEAK_RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def run_measured(mode: str, target: str, *argv: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one fresh child process, read by the child itself.

    (The parent stays small and the heavy work runs in children only: Linux carries a process's pre-exec
    peak RSS across exec, and RUSAGE_CHILDREN is a max over all children, so neither is usable here.)
    """
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, mode, target, *argv], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    return wall, int(out.rsplit("PEAK_RSS", 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=262144)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--workdir", default="/tmp/dj_convert_bench")
    a = p.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    info = json.loads(subprocess.run(
        [sys.executable, "-c", f"import json, sys; sys.path.insert(0, 'benchmarks'); from convert import "
         f"write_synthetic; from pathlib import Path; print(json.dumps(write_synthetic(Path({str(work / 'hf')!r}), "
         f"{a.vocab}, {a.hidden}, {a.layers})))"], check=True, cwd=ROOT, capture_output=True, text=True).stdout)
    gb = info["total_bytes"] / 1e9
    _, base = run_measured("code", "import jax, orbax.checkpoint, conversion.hf_import, dreamjax.pretrained; "
                                   "jax.numpy.zeros(1).block_until_ready()")
    t_conv, rss_conv = run_measured("module", "dreamjax.cli", "convert", "--from-hf", str(work / "hf"), "--out",
                                    str(work / "ckpt"))
    t_exp, rss_exp = run_measured("module", "dreamjax.cli", "export", "--ckpt", str(work / "ckpt"), "--out",
                                  str(work / "back"))
    largest = info["largest_bytes"]
    print(f"synthetic checkpoint: {info['tensors']} tensors, {gb:.2f} GB fp32, largest tensor "
          f"{largest / 1e9:.2f} GB (embedding {a.vocab}x{a.hidden})")
    print(f"fixed overhead (import jax + converter): {base / 1e9:.2f} GB RSS")
    print(f"{'step':<9}{'wall s':>8}{'s/GB':>8}{'peak RSS GB':>13}{'(RSS-fixed)/largest':>21}")
    rows = {}
    for name, t, rss in (("convert", t_conv, rss_conv), ("export", t_exp, rss_exp)):
        ratio = (rss - base) / largest
        rows[name] = dict(wall_s=round(t, 1), s_per_gb=round(t / gb, 2), peak_rss_gb=round(rss / 1e9, 2),
                          rss_over_largest=round(ratio, 2))
        print(f"{name:<9}{t:>8.1f}{t / gb:>8.2f}{rss / 1e9:>13.2f}{ratio:>21.2f}")
    print("goal: (peak RSS - fixed overhead) <= 3 x largest tensor")
    print(json.dumps(dict(bench="convert", **info, fixed_rss_bytes=base, **rows)))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
