"""The ``dreamjax`` command. Subcommands grow with the project:

  dreamjax demo     [--out DIR] [--quick]           the embedded default (runs on one CPU)
  dreamjax forward  --model PATH [--image IMG] --prompt TEXT    one forward pass; prints top next tokens
  dreamjax generate --model PATH [--image IMG] --prompt TEXT [--max-new-tokens N --steps S --alg A]
  dreamjax info     --config CONFIG [--config.x=y]  parameter counts of a config (no allocation)
  dreamjax convert  --from-hf DIR --out CKPT [--mesh data=1,fsdp=8,tensor=1] [--dtype D] [--scan-layers]
                    [--merge-lora ADAPTER_DIR | --keep-lora ADAPTER_DIR]
  dreamjax export   --ckpt CKPT --out DIR [--layout dream|hf5] [--dtype D] [--max-shard-size 5GB]
                    [--lora-adapter-out ADAPTER_DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_demo(args) -> int:
    from dreamjax import demo

    print(json.dumps(demo.main(args), indent=2))
    return 0


def cmd_forward(args) -> int:
    import numpy as np

    from dreamjax.smoke import token_label
    from dreamjax.pretrained import DreamVL

    model = DreamVL.from_pretrained(args.model, dtype=args.dtype)
    ids, pixel_values, grid = _encode_prompt(model, args)
    logits = np.asarray(model(ids, None, pixel_values, grid), np.float32)
    top = np.argsort(-logits[0, -1])[: args.top]
    for i in top:
        print(f"{int(i):>8d}  {logits[0, -1, i]:9.3f}  {token_label(model.tokenizer, int(i))!r}")
    return 0


def _add_prompt_args(p) -> None:
    """Arguments of the commands that run a checkpoint on one image + prompt."""
    p.add_argument("--model", required=True, help="HF snapshot dir or dreamjax checkpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--min-pixels", type=int, default=3136)
    p.add_argument("--max-pixels", type=int, default=3211264)


def _encode_prompt(model, args):
    """Chat prompt (+ image) for --prompt/--image → (input_ids [1, P], pixel_values, grid)."""
    from dreamjax.data.chat_template import build_prompt
    from dreamjax.data.image_processor import preprocess

    if model.tokenizer is None:
        raise ValueError(f"{args.model}: no tokenizer files; --prompt needs one to encode the text")
    content = [{"type": "text", "text": args.prompt}]
    pixel_values = grid = None
    if args.image:
        from PIL import Image

        pixel_values, grid = preprocess([Image.open(args.image)], args.min_pixels, args.max_pixels)
        content.insert(0, {"type": "image"})
    ids = build_prompt(model.tokenizer, [{"role": "user", "content": content}], grid)[None]
    return ids, pixel_values, grid


def cmd_generate(args) -> int:
    import time

    from dreamjax.diffusion.sampler import decode_generated, default_stop_ids
    from dreamjax.pretrained import DreamVL

    model = DreamVL.from_pretrained(args.model, dtype=args.dtype)
    ids, pixel_values, grid = _encode_prompt(model, args)
    t0 = time.perf_counter()
    out = model.generate(ids, None, pixel_values, grid, max_new_tokens=args.max_new_tokens, steps=args.steps,
                         alg=args.alg, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         alg_temp=args.alg_temp, rng=args.seed)
    text = decode_generated(model.tokenizer, out, ids.shape[1], default_stop_ids(model.config, model.tokenizer))[0]
    logging.getLogger("dreamjax").info("generated in %.2fs (first call includes compilation)",
                                       time.perf_counter() - t0)
    print(text)
    return 0


def cmd_info(args) -> int:
    import math

    import flax.linen as nn
    import jax

    from dreamjax.config_loader import load_config, model_config
    from dreamjax.pretrained import _dummy_inputs
    from dreamjax.models.dream_vl import DreamVLModel

    config = model_config(load_config(args.config, args.overrides))
    abstract = nn.unbox(jax.eval_shape(DreamVLModel(config).init, jax.random.key(0), *_dummy_inputs(config)))["params"]
    total = 0
    for name, sub in abstract.items():
        n = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(sub))
        total += n
        print(f"{name:<12s} {n:>15,d}")
    print(f"{'total':<12s} {total:>15,d}")
    return 0


def _parse_mesh(text: str | None):
    if not text:
        return None
    from dreamjax import sharding

    try:
        shape = {k: int(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise ValueError(f"--mesh {text!r}: expected e.g. data=1,fsdp=-1,tensor=2") from None
    return sharding.make_mesh(shape)


def _parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit, mult in units.items():
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * mult)
    if t.isdigit():
        return int(t)
    raise ValueError(f"size {text!r}: expected e.g. 5GB, 500MB or a byte count")


def cmd_convert(args) -> int:
    from conversion.hf_import import convert

    out = convert(args.from_hf, args.out, mesh=_parse_mesh(args.mesh), dtype=args.dtype,
                  scan_layers=args.scan_layers, overwrite=args.overwrite, merge_lora=args.merge_lora,
                  keep_lora=args.keep_lora)
    print(out)
    return 0


def cmd_export(args) -> int:
    from conversion.hf_export import export

    out = export(args.ckpt, args.out, layout=args.layout, dtype=args.dtype,
                 max_shard_bytes=_parse_size(args.max_shard_size), overwrite=args.overwrite,
                 lora_adapter_out=args.lora_adapter_out)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="dreamjax", description="Dream-VL / Dream-VLA in JAX")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the embedded default: Meta-World experts → RLDS → train a tiny Dream-VLA → "
                       "closed-loop eval → report")
    from dreamjax.demo import add_arguments as add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("forward", help="one forward pass of a checkpoint on an image + prompt")
    _add_prompt_args(p)
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(fn=cmd_forward)

    p = sub.add_parser("generate", help="diffusion generation from a checkpoint on an image + prompt")
    _add_prompt_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--alg", default="maskgit_plus", choices=["origin", "maskgit_plus", "topk_margin", "entropy"])
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--alg-temp", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("info", help="parameter counts of a model config")
    p.add_argument("--config", required=True)
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("convert", help="HF/PyTorch snapshot → dreamjax checkpoint (streaming)")
    p.add_argument("--from-hf", required=True, help="HF snapshot dir: config.json + safetensors [+ tokenizer]")
    p.add_argument("--out", required=True)
    p.add_argument("--mesh", help="target mesh, e.g. data=1,fsdp=-1,tensor=1 (default: one device)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="convert dtype (default: keep as stored)")
    p.add_argument("--scan-layers", action="store_true", help="store layers stacked (for scanned configs)")
    p.add_argument("--merge-lora", help="peft adapter dir to merge into the base weights while converting")
    p.add_argument("--keep-lora", help="peft adapter dir to keep as LoRA params beside the unmerged base weights "
                   "(train.init_from continues them; export merges them or writes them back as a peft dir)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_convert)

    p = sub.add_parser("export", help="dreamjax checkpoint → HF layout (sharded safetensors + index)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", help="HF snapshot dir to write (optional with --lora-adapter-out)")
    p.add_argument("--layout", default="dream", choices=["dream", "hf5"],
                   help="tensor names: dream (visual.*, model.*: what Dream-VL-7B ships) or hf5 (transformers 5)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="convert dtype (default: keep as stored)")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--lora-adapter-out", help="write kept LoRA adapters as a peft adapter dir here (and the base "
                   "weights unmerged to --out); default: merged into the exported weights")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_export)
    __import__("dreamjax.train.cli", fromlist=["register"]).register(sub)
    __import__("dreamjax.data.cli", fromlist=["register"]).register(sub)  # dreamjax data stats|convert|preview
    __import__("dreamjax.eval.cli", fromlist=["register"]).register(sub)  # dreamjax eval libero|metaworld|vl|merge

    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = rest
    _setup_logging(args.verbose)
    if args.command in ("demo", "train", "eval", "generate", "forward"):  # compute processes (dreamjax.hostmem)
        from dreamjax.hostmem import reuse_freed_memory

        reuse_freed_memory()
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        logging.getLogger("dreamjax").error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
