"""Dream-VLA policy latency: ``DreamVLA.predict_action`` vs the same computation in PyTorch, same run.

    python benchmarks/predict_action.py [--configs tiny small] [--repeats 20] [--threads 2] [--breakdown] [--malloc reuse|default]

Per config, two objectives: flow matching with 4 Euler steps (the LIBERO recipe) and discrete diffusion with 1
decoding step (the reference eval's ``steps=1``). Batch 1, 2 cameras + proprio, chunk × action dim as below.

* ``tiny``: ``configs/dream_vla_tiny.py`` (LLM 2 layers × 32, ViT 1 block, 28-px cameras → 1 token each,
  chunk 4 × 3, 56-token canvas);
* ``small``: the small model of ``forward.py`` (LLM 4 layers × 512, vocab 32000, ViT 4 × 256) with the LIBERO
  shapes: 224-px cameras (64 tokens each), chunk 8 × 7, proprio 8.

Both sides get the same raw inputs (uint8 images, instruction, proprio) and run the same host-side layout
(``dreamjax.data.vla_layout``: tokenization + image preprocessing); the torch side is transformers Qwen2-VL
(``text_config.is_causal=False``, the model has no Dream projector) + torch heads (``tests/models/
test_action_heads.py``), weights converted to dreamjax, fp32, ``torch.no_grad``. Its loop is the reference's
(spec §6.1, §6.4.3–6.4.4): prepend [proprio, timestep] embeddings, positions ``cumsum(mask)``, the full decoder
per step, features at position − 1 of the action slots (flow) / lm_head over every position and argmax at the
masked slots (discrete diffusion; action slots restricted to the action ids, as dreamjax). ``torch_ref`` re-runs the vision tower in every forward as the reference's
``forward(pixel_values=…)`` does; ``torch_cached`` encodes the images once (what dreamjax does) — the fairer
peer. dreamjax times ``predict_action`` end to end (one compiled function per objective,
``dreamjax.vla.objectives.predict_normalized``: the discrete objectives' action slots scored over the action ids
only; the decoded tokens are the same, the benchmark checks them against torch's).

``--breakdown`` also times the parts of one chunk on each side (host layout, vision tower + embeddings, one
decoder pass, the scoring: ``lm_head`` / action head), each compiled or called on its own.

Reported: median ms per chunk, chunks/s, actions/s (chunk steps per second), the ratio dreamjax / torch.
Timing interleaved (dreamjax, torch_ref, torch_cached, …) or, with ``--blocked``, one implementation after the
other; JAX's first call (compile) reported separately.
Last line: one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
from benchmarks.forward import cpu_name, interleaved  # noqa: E402
from benchmarks.matmul_peak import add_malloc_argument, apply_malloc, limit_threads  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "small"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocked", action="store_true",
                   help="time each implementation in its own block instead of interleaving them")
    p.add_argument("--breakdown", action="store_true", help="also time the parts of a chunk on each side")
    add_malloc_argument(p)
    return p.parse_args()


def blocked(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """All runs of one implementation, then the next (keeps one runtime's idle threads off the other's)."""
    out = {}
    for name, fn in fns.items():
        out.update(interleaved({name: fn}, repeats, warmup))
    return out


def setting(name: str):
    """(dreamjax model config with model_type qwen2_vl, layout dims)."""
    from dreamjax.config_loader import load_config, model_config

    if name == "tiny":
        c = model_config(load_config("dream_vla_tiny")).replace(model_type="qwen2_vl", use_projector=False)
        return c, dict(chunk=4, action_dim=3, proprio_dim=2, image_size=28)
    from benchmarks.forward import bench_config

    return bench_config(), dict(chunk=8, action_dim=7, proprio_dim=8, image_size=224)


def build(name: str, objective: str, seed: int = 0):
    """(DreamVLA, torch policy) with the same random weights."""
    import jax
    import numpy as np
    import torch

    from benchmarks.forward import build_models
    from conversion import heads as head_io
    from dreamjax.vla import synthetic
    from dreamjax.vla.model import VLAHeadConfig
    from dreamjax.vla.objectives import ObjectiveSettings
    from dreamjax.vla.policy import DreamVLA
    from tests.models.test_action_heads import load_into_torch, torch_module
    from tests.tiny import randomize_torch_

    c, dims = setting(name)
    tok = synthetic.tokenizer()
    c = c.replace(vocab_size=max(c.vocab_size, 672), mask_token_id=tok.mask_id, pad_token_id=tok.pad_id,
                  eos_token_id=tok.eos_id, bos_token_id=tok.eos_id, image_token_id=tok.image_pad_id,
                  video_token_id=tok.video_pad_id, vision_start_token_id=tok.vision_start_id,
                  vision_end_token_id=tok.vision_end_id, vision_token_id=tok.vision_pad_id).validate()
    hf, _, vlm_params = build_models(c, "float32")
    head = VLAHeadConfig(objective=objective, chunk=dims["chunk"], action_dim=dims["action_dim"],
                         proprio_dim=dims["proprio_dim"], use_proprio=True)
    params = {"params": jax.tree_util.tree_map(np.asarray, dict(vlm_params))}
    torch_heads = {}
    comps = {"proprio_projector": None}
    if objective == "flow":
        comps.update(action_head="flow", noisy_action_projector=None)
    torch.manual_seed(seed)
    for comp, kind in comps.items():
        m = torch_module(comp, kind, d=c.hidden_size, a=head.action_dim, p=head.proprio_dim)
        randomize_torch_(m, seed=seed + 1)
        sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        params["params"][comp] = head_io.head_state_dict_to_params(comp, sd)
        torch_heads[comp] = load_into_torch(m, sd)
    settings = ObjectiveSettings(mask_token_id=tok.mask_id, vocab_len=len(tok), flow_steps=4, discrete_steps=1)
    policy = DreamVLA(c, head, params, tok, settings=settings, num_images=2, image_size=dims["image_size"])
    return policy, TorchPolicy(hf, torch_heads, policy), dims


class TorchPolicy:
    """The reference's predict_action loop over transformers modules (module docstring)."""

    def __init__(self, hf, heads, policy):
        self.hf, self.heads, self.policy = hf, heads, policy

    def __call__(self, images, instruction, proprio, cached: bool):
        import numpy as np
        import torch

        from dreamjax.data.vla_layout import layout_sample

        p = self.policy
        h = p.head
        s = layout_sample(dict(images=images, instruction=instruction, proprio=proprio), p.tokenizer,
                          p.layout_for(instruction))
        n_prefix = h.num_prefix
        n = int(s["attention_mask"].sum())
        ids = torch.from_numpy(s["input_ids"][n_prefix:n].astype(np.int64))[None]  # the reference's unpadded prompt
        start = int(s["action_start"]) - n_prefix
        targets = torch.arange(start, start + h.num_action_tokens + 2)
        if h.objective == "discrete_diffusion":
            ids[0, targets] = p.config.mask_token_id
        pv = torch.from_numpy(s["pixel_values"].reshape(-1, s["pixel_values"].shape[-1]))
        grid = torch.tensor([[1, p.image_size // 14, p.image_size // 14]] * p.num_images)
        model = self.hf.model
        with torch.no_grad():
            def token_embeds():
                e = model.get_input_embeddings()(ids)
                feats = torch.cat(model.get_image_features(pv, grid).pooler_output, 0)
                mask = (ids == p.config.image_token_id)[..., None].expand_as(e)
                return e.masked_scatter(mask, feats.to(e.dtype))

            prop = self.heads["proprio_projector"](torch.from_numpy(s["proprio"])[None])[:, None]
            cache = token_embeds() if cached else None

            def hidden(action_embeds=None, time_embed=None):
                e = cache.clone() if cached else token_embeds()
                if action_embeds is not None:
                    e[:, start:start + h.num_action_tokens] = action_embeds
                prefix = [prop] + ([time_embed[:, None]] if time_embed is not None else [])
                e = torch.cat(prefix + [e], 1)
                mask = torch.ones(e.shape[:2], dtype=torch.long)
                pos = torch.cumsum(mask, 1)
                out = model.language_model(inputs_embeds=e, attention_mask=mask,
                                           position_ids=pos[None].expand(3, -1, -1))
                return out.last_hidden_state[:, len(prefix):]

            if h.objective == "flow":
                from tests.models.test_action_heads import np_sinusoid

                x = torch.randn(1, h.chunk, h.action_dim)
                for k in range(p.settings.flow_steps):
                    t = k / p.settings.flow_steps
                    te = torch.from_numpy(np_sinusoid(np.array([t], np.float32), p.config.hidden_size))
                    hs = hidden(self.heads["noisy_action_projector"](x.reshape(1, -1, 1)), te)
                    feats = hs[:, start - 1:start - 1 + h.num_action_tokens].reshape(1, h.chunk, -1)
                    x = x + self.heads["action_head"](feats) / p.settings.flow_steps
                return x[0].numpy()
            logits = self.hf.lm_head(hidden())
            logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)  # the shift
            logits = logits[0, targets]
            logits[:h.num_action_tokens, :p.action_tokenizer.first_id] = -torch.inf  # action slots: action ids
            logits[:h.num_action_tokens, p.action_tokenizer.vocab_len:] = -torch.inf  # (as dreamjax does)
            tokens = logits.argmax(-1)
            return p.action_tokenizer.decode(tokens[:h.num_action_tokens].numpy()).reshape(h.chunk, h.action_dim)


def parts(policy, torch_policy, images, instruction, proprio) -> dict:
    """{part: zero-argument callable} of one chunk, dreamjax and torch (``--breakdown``)."""
    import jax
    import numpy as np
    import torch

    from dreamjax.data.vla_layout import collate, layout_sample
    from dreamjax.vla import objectives
    from dreamjax.vla.action_logits import split_target_logits
    from dreamjax.vla.model import DreamVLAModel

    m, p, h = policy.module, policy.params, policy.head
    frame = dict(images=images, instruction=instruction, proprio=proprio)
    layout = policy.layout_for(instruction)
    batch = jax.device_put(collate([layout_sample(frame, policy.tokenizer, layout)]))
    encode = jax.jit(lambda p, b: objectives.encode_batch(m, p, b))
    embeds = encode(p, batch)
    decode = jax.jit(lambda p, e, b: objectives.decode_batch(m, p, e, b))
    hidden = decode(p, embeds, batch)
    out = {"host layout (tokens + images)": lambda: collate([layout_sample(frame, policy.tokenizer, layout)]),
           "jax: vision + embeddings": lambda: encode(p, batch).block_until_ready(),
           "jax: decoder pass": lambda: decode(p, embeds, batch).block_until_ready()}
    if h.objective == "flow":
        def head_fn(p, x, b):
            feats = m.apply(p, x, b["action_start"], method=DreamVLAModel.action_features)
            return m.apply(p, feats, method=DreamVLAModel.predict_head)
        head = jax.jit(head_fn)
        out["jax: action head"] = lambda: head(p, hidden, batch).block_until_ready()
    else:
        n = h.num_action_tokens + 2
        full = jax.jit(lambda p, x, b: m.apply(p, x, b["action_start"], n, method=DreamVLAModel.target_logits))
        suffix = 2 if policy.settings.discrete_steps > 1 else 0  # one step: the suffix rows are not scored
        ids = jax.jit(lambda p, x, b: split_target_logits(m, p, x, b["action_start"], policy.settings, suffix))
        out["jax: lm_head, 58 target rows × vocab"] = lambda: full(p, hidden, batch).block_until_ready()
        out["jax: lm_head, action rows × action ids"] = lambda: jax.block_until_ready(ids(p, hidden, batch))
    s = layout_sample(frame, policy.tokenizer, layout)
    n_valid = int(s["attention_mask"].sum()) - h.num_prefix
    pv = torch.from_numpy(s["pixel_values"].reshape(-1, s["pixel_values"].shape[-1]))
    grid = torch.tensor([[1, policy.image_size // 14, policy.image_size // 14]] * policy.num_images)
    e = torch.from_numpy(np.array(embeds[:, : n_valid + h.num_prefix]))
    pos = torch.arange(1, e.shape[1] + 1)[None]
    model = torch_policy.hf.model

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    out["torch: vision tower"] = no_grad(lambda: model.get_image_features(pv, grid))
    ones = torch.ones(e.shape[:2], dtype=torch.long)
    out["torch: decoder pass"] = no_grad(lambda: model.language_model(
        inputs_embeds=e, attention_mask=ones, position_ids=pos[None].expand(3, -1, -1)))
    if h.objective == "flow":
        feats = torch.randn(1, h.chunk, h.action_dim * policy.config.hidden_size)
        out["torch: action head"] = no_grad(lambda: torch_policy.heads["action_head"](feats))
    else:
        hs = torch.from_numpy(np.array(hidden[:, :e.shape[1]]))
        out["torch: lm_head, every position × vocab"] = no_grad(lambda: torch_policy.hf.lm_head(hs))
    return out


def main() -> None:
    args = parse_args()
    threads = limit_threads(args.threads)
    apply_malloc(args.malloc)
    import jax
    import numpy as np
    import torch

    rows, records = [], []
    rng = np.random.default_rng(0)
    for name in args.configs:
        for objective in ("flow", "discrete_diffusion"):
            policy, torch_policy, dims = build(name, objective)
            images = rng.integers(0, 256, (2, dims["image_size"], dims["image_size"], 3), dtype=np.uint8)
            proprio = rng.uniform(-1, 1, dims["proprio_dim"]).astype(np.float32)
            instr = "put the bowl on the plate"
            t0 = time.perf_counter()
            jax_out = policy.predict_action(images, instr, proprio)
            first = time.perf_counter() - t0
            torch_out = torch_policy(images, instr, proprio, cached=True)
            agree = float(np.abs(jax_out - torch_out).max()) if objective == "discrete_diffusion" else None
            fns = {"dreamjax": lambda: policy.predict_action(images, instr, proprio),
                   "torch_ref": lambda: torch_policy(images, instr, proprio, cached=False),
                   "torch_cached": lambda: torch_policy(images, instr, proprio, cached=True)}
            times = (blocked if args.blocked else interleaved)(fns, args.repeats, args.warmup)
            med = {k: statistics.median(v) for k, v in times.items()}
            steps = "4 Euler steps" if objective == "flow" else "1 step"
            rec = dict(config=name, objective=objective, steps=steps, chunk=dims["chunk"],
                       ms={k: round(v * 1e3, 3) for k, v in med.items()}, jax_first_call_s=round(first, 2),
                       ratio_vs_torch_ref=round(med["dreamjax"] / med["torch_ref"], 3),
                       ratio_vs_torch_cached=round(med["dreamjax"] / med["torch_cached"], 3),
                       discrete_max_abs_diff=agree)
            if args.breakdown:
                split = interleaved(parts(policy, torch_policy, images, instr, proprio), args.repeats, args.warmup)
                rec["breakdown_ms"] = {k: round(statistics.median(v) * 1e3, 3) for k, v in split.items()}
            records.append(rec)
            for k, v in med.items():
                rows.append((name, f"{objective} ({steps})", k, v * 1e3, 1 / v, dims["chunk"] / v,
                             v / med["torch_ref"], v / med["torch_cached"]))
    print(f"CPU: {cpu_name()}; threads {threads}; jax {jax.__version__}, torch {torch.__version__}; "
          f"batch 1; median of {args.repeats} ({'blocked' if args.blocked else 'interleaved'}); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'config':<7} {'objective':<34} {'impl':<13} {'ms/chunk':>9} {'chunks/s':>9} {'actions/s':>10} "
          f"{'÷torch_ref':>10} {'÷torch_cached':>13}")
    for r in rows:
        print(f"{r[0]:<7} {r[1]:<34} {r[2]:<13} {r[3]:9.2f} {r[4]:9.1f} {r[5]:10.1f} {r[6]:10.2f} {r[7]:13.2f}")
    for rec in records:
        print(f"# {rec['config']} {rec['objective']}: first dreamjax call (compile) {rec['jax_first_call_s']} s"
              + (f"; discrete tokens dreamjax vs torch max |Δaction| {rec['discrete_max_abs_diff']:.3g}"
                 if rec["discrete_max_abs_diff"] is not None else ""))
    for rec in records:
        for part, ms in rec.get("breakdown_ms", {}).items():
            print(f"# {rec['config']} {rec['objective']} part: {part:<44} {ms:9.2f} ms")
    print(json.dumps(dict(benchmark="predict_action", malloc=args.malloc, threads=threads, blocked=args.blocked,
                          load_average=os.getloadavg()[0], results=records)))


if __name__ == "__main__":
    main()
