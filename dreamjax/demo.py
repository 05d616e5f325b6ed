"""The embedded default, ``dreamjax demo``: a Dream-VLA learns Meta-World from scratch on one CPU.

Stages (each logs its progress; wall time per stage goes into the report):

1. **collect** — Meta-World's scripted experts (``metaworld.policies``) run ``--episodes`` placements per task
   (the goal / object placements of ``metaworld.MT1`` seeds 1, 2, …: 50 per seed) through :class:`dreamjax.eval.metaworld_sim.MetaWorldSim`
   (cameras ``corner3`` + ``corner``, fast render, the goal marker drawn at the 5 cm success radius); successful episodes are written as a real RLDS dataset
   (``OUT/data/metaworld_expert/1.0.0``: features.json, dataset_info.json, TFRecords) by dreamjax's writer
   (:func:`dreamjax.eval.collect.collect_expert_dataset`).
2. **tokenizer** — a sentencepiece tokenizer trained on the Dream-VLA prompts of these tasks, plus the 256
   action tokens.
3. **train** — ``configs/dream_vla_metaworld_demo.py`` (tiny Dream-VLA, L1 action head) through dreamjax's
   training loop (:func:`dreamjax.train.loop.train`) on the RLDS data via the Dream-VLA pipeline
   (``data.kind="rlds"``, dataset config ``metaworld_expert``: actions padded to the 7-d EEF_POS layout).
4. **eval** — the trained checkpoint loaded as a policy (``DreamVLA.from_pretrained``) and rolled out in closed
   loop by the evaluation harness (:func:`dreamjax.eval.rollout.evaluate`) on ``--eval-episodes`` **held-out**
   placements per task (MT1 seed 0's placements ``0 … eval_episodes−1``: the experts were never recorded
   there), executing each predicted chunk
   open loop; a GIF per episode.
5. **report** — ``OUT/report.md`` (success per task, wall time per stage, settings, machine load),
   ``OUT/loss.png``, ``OUT/rollout_<task>.gif`` (one rollout per task, a success when there is one),
   ``OUT/summary.json``.

``--quick`` is a 1–2 minute smoke run of the same path (one task, a few episodes, a few dozen steps): it checks
the plumbing, not the learning. Needs the Meta-World extra: ``pip install 'dreamjax[metaworld]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from dreamjax.eval.store import file_written_atomically, write_atomic

log = logging.getLogger("dreamjax.demo")
CONFIG = "dream_vla_metaworld_demo"
MARKER = ".dreamjax-demo"
STAGE_DIRS = ("data", "tokenizer", "train", "eval")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What one demo run does. ``episodes``: expert demonstrations recorded per task (MT1 seeds 1, 2, …, 50
    placements each); ``eval_episodes``: closed-loop trials per task on MT1 seed 0's placements (held out);
    ``steps``: training steps. ``cameras``: Meta-World camera names, one or two (the model sees each as an
    image: two views pin down the 3-D goal, which one view leaves ambiguous along its line of sight).
    ``expert_tcp_tasks``: tasks whose scripted expert steers the tool centre point, where success is measured,
    instead of the hand 4.5 cm above it (``MetaWorldExpertPolicy``): Meta-World's reach expert parks the hand on
    the goal, which leaves the TCP on the rim of the 5 cm success sphere, and an imitator 1 cm off misses."""

    tasks: tuple[str, ...] = ("reach-v3", "push-v3")
    episodes: int = 100
    eval_episodes: int = 20
    steps: int = 4000
    batch_size: int = 32
    image_size: int = 84
    cameras: tuple[str, ...] = ("corner3", "corner")
    goal_marker_radius: float | None = 0.05
    expert_tcp_tasks: tuple[str, ...] = ("reach-v3",)
    collect_max_steps: int = 200
    eval_max_steps: int = 150
    video: str = "gif"
    seed: int = 0
    overrides: tuple[str, ...] = ()

    def validate(self) -> "DemoSettings":
        from dreamjax.eval.metaworld_sim import NUM_INIT_STATES

        if not self.tasks:
            raise ValueError("--tasks: name at least one Meta-World task, e.g. reach-v3")
        if self.episodes < 1 or self.eval_episodes < 1 or self.steps < 1:
            raise ValueError("--episodes, --eval-episodes and --steps must be >= 1")
        if self.eval_episodes > NUM_INIT_STATES:
            raise ValueError(f"--eval-episodes {self.eval_episodes} > the {NUM_INIT_STATES} placements of "
                             "Meta-World's MT1 (seed 0) per task")
        if not 1 <= len(self.cameras) <= 2:
            raise ValueError(f"--cameras {','.join(self.cameras)}: the Dream-VLA layout takes one or two images")
        if self.image_size % 28:
            raise ValueError(f"--image-size {self.image_size}: must be a multiple of 28 (ViT patch 14 × merge 2)")
        return self


EVAL_SEED = 0  # MT1 seed of the evaluation placements; the experts are recorded on seeds 1, 2, …


def train_seeds(s: DemoSettings) -> tuple[int, ...]:
    """The MT1 seeds whose placements the experts are recorded on (50 per seed, never the evaluation's)."""
    from dreamjax.eval.metaworld_sim import NUM_INIT_STATES

    return tuple(range(EVAL_SEED + 1, EVAL_SEED + 1 + -(-s.episodes // NUM_INIT_STATES)))


QUICK = dict(tasks=("reach-v3",), episodes=3, eval_episodes=2, steps=30, batch_size=8, image_size=56,
             eval_max_steps=40)


# ------------------------------------------------------------------------------------------------ stages
def prepare_out(out: Path) -> None:
    """``out`` is new, empty, or a previous demo's folder (then its stage folders are replaced)."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(f"{out} exists and is not a dreamjax demo folder (no {MARKER}); pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `dreamjax demo`; its stage folders are replaced on the next run\n")
    for name in STAGE_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for stale in list(out.glob("rollout_*.gif")) + list(out.glob("rollout_*.mp4")):
        stale.unlink()


def train_tokenizer(tasks, out: Path):
    """Sentencepiece on the Dream-VLA prompts of ``tasks`` (system message included) + 256 action tokens."""
    from dreamjax.data.chat_template import DEFAULT_SYSTEM_MESSAGE
    from dreamjax.data.tokenizer_spm import train_sentencepiece
    from dreamjax.data.vla_layout import PROMPT
    from dreamjax.eval.metaworld_sim import instruction_for

    texts = [DEFAULT_SYSTEM_MESSAGE, "system", "user", "assistant"]
    texts += [PROMPT.format(instruction=instruction_for(t).lower()) for t in tasks]
    return train_sentencepiece(texts * 50, out, vocab_size=448, num_action_tokens=256)


def train_config(s: DemoSettings, data_dir: Path, tokenizer_dir: Path, tokenizer_len: int):
    from dreamjax.config_loader import load_config

    cfg = load_config(CONFIG, [f"--config.train.steps={s.steps}", f"--config.train.batch_size={s.batch_size}",
                               f"--config.vla.image_size={s.image_size}", f"--config.train.seed={s.seed}",
                               f"--config.vla.num_images={len(s.cameras)}", *s.overrides])
    cfg.data.data_dir, cfg.data.tokenizer = str(data_dir), str(tokenizer_dir)
    cfg.data.cameras = ("primary", "secondary")[: len(s.cameras)]  # metaworld_expert: image, image2
    cfg.vla.tokenizer_len = tokenizer_len
    if not any(o.startswith("--config.vla.canvas_length") for o in s.overrides):
        cfg.vla.canvas_length = canvas_length_for(s.tasks, tokenizer_dir, cfg)
    if tokenizer_len > cfg.model.vocab_size:
        raise ValueError(f"the demo tokenizer has {tokenizer_len} tokens > model.vocab_size={cfg.model.vocab_size}")
    # decay the learning rate for the last 20 % of the steps unless the command line says otherwise
    if not any(o.startswith("--config.train.decay_at") for o in s.overrides):
        cfg.train.decay_at = max(1, int(0.8 * s.steps))
    if not any(o.startswith("--config.train.log_every") for o in s.overrides):  # ≥ 10 points on the loss curve
        cfg.train.log_every = max(1, min(int(cfg.train.log_every), s.steps // 10))
    if not any(o.startswith("--config.train.warmup_steps") for o in s.overrides):
        cfg.train.warmup_steps = min(int(cfg.train.warmup_steps), max(0, s.steps // 10))
    return cfg


def canvas_length_for(tasks, tokenizer_dir: Path, cfg, multiple: int = 8) -> int:
    """The shortest canvas (rounded up to ``multiple``) that holds the longest sample of ``tasks``: every
    token position costs compute in each layer, so the demo does not pad to a generic length."""
    from dreamjax.data.tokenizer import Tokenizer
    from dreamjax.data.vla_layout import prompt_ids
    from dreamjax.eval.metaworld_sim import instruction_for
    from dreamjax.vla.task import layout_from_config

    tok = Tokenizer.from_pretrained(tokenizer_dir)
    layout = layout_from_config(cfg)
    need = max(len(prompt_ids(instruction_for(t), tok, layout)) for t in tasks)
    need += layout.num_prefix + layout.num_action_tokens + 2  # + <|im_end|> "\n"
    return -(-need // multiple) * multiple


class MetaWorldVLAPolicy:
    """A Dream-VLA trained on ``metaworld_expert`` behind the harness: its 7-d EEF_POS chunk (un-normalized)
    → Meta-World's 4-d actions (:func:`dreamjax.data.oxe.transforms.metaworld_action_from_eef_pos`)."""

    def __init__(self, model):
        from dreamjax.eval.policy import DreamVLAPolicy

        self.inner = DreamVLAPolicy(model, unnorm_key="metaworld_expert")

    def reset(self, episode) -> None:
        self.inner.reset(episode)

    def act(self, obs) -> np.ndarray:
        from dreamjax.data.oxe.transforms import metaworld_action_from_eef_pos

        return metaworld_action_from_eef_pos(self.inner.act(obs))


def evaluate_policy(s: DemoSettings, checkpoint: Path, out: Path, chunk: int) -> dict:
    from dreamjax.eval.episodes import plan_episodes
    from dreamjax.eval.metaworld_sim import NUM_INIT_STATES, MetaWorldSim
    from dreamjax.eval.rollout import RolloutSettings, evaluate
    from dreamjax.vla.policy import DreamVLA

    model = DreamVLA.from_pretrained(checkpoint)
    sim = MetaWorldSim(s.tasks, seed=EVAL_SEED, max_steps=s.eval_max_steps, image_size=s.image_size, camera=s.cameras,
                       fast_render=True, goal_marker_radius=s.goal_marker_radius)
    planned = plan_episodes("metaworld", list(s.tasks), s.eval_episodes, first_init=0, seed=s.seed,
                            num_init_states=[NUM_INIT_STATES] * len(s.tasks))
    settings = RolloutSettings(open_loop_steps=chunk, video=s.video, fps=20)
    return evaluate(sim, MetaWorldVLAPolicy(model), planned, out, settings=settings, process_index=0,
                    process_count=1, run_settings=dict(checkpoint=str(checkpoint), mt1_seed=EVAL_SEED,
                                                                    train_mt1_seeds=list(train_seeds(s))))


# ------------------------------------------------------------------------------------------------ report
def read_losses(metrics_jsonl: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    return [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") is not None]


def plot_loss(points: list[tuple[int, float]], path: Path, title: str) -> Path:
    """Loss curve PNG (matplotlib when installed, else drawn with PIL); log-scale y."""
    if not points:
        raise ValueError(f"{path}: no loss values to plot")
    steps, losses = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    with file_written_atomically(path, suffix=".png") as tmp:
        _plot_loss_file(steps, losses, tmp, title)
    return path


def _plot_loss_file(steps, losses, tmp: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(steps, losses, marker="." if len(steps) < 50 else None)
        ax.set_yscale("log")
        ax.set(xlabel="training step", ylabel="L1 loss (normalized actions)", title=title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(tmp)
        plt.close(fig)
    except ImportError:
        _plot_loss_pil(steps, losses, tmp, title)


def _plot_loss_pil(steps, losses, path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    w, h, m = 600, 350, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    y = np.log10(np.maximum(losses, 1e-12))
    lo, hi = float(y.min()), float(y.max()) if y.max() > y.min() else float(y.min()) + 1
    x0, x1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))
    pts = [(m + (w - 2 * m) * (sx - x0) / (x1 - x0), h - m - (h - 2 * m) * (sy - lo) / (hi - lo))
           for sx, sy in zip(steps, y)]
    d.rectangle([m, m, w - m, h - m], outline="black")
    if len(pts) > 1:
        d.line(pts, fill=(31, 119, 180), width=2)
    d.text((m, 15), f"{title} (log scale: {10 ** lo:.3g} … {10 ** hi:.3g})", fill="black")
    d.text((m, h - m + 10), f"step {int(x0)}", fill="black")
    d.text((w - m - 60, h - m + 10), f"step {int(x1)}", fill="black")
    img.save(path, format="PNG")


def pick_rollouts(eval_dir: Path, summary_records: list[dict], out: Path, fmt: str) -> list[Path]:
    """Copy one rollout video per task into ``out`` (the first success, else the first episode)."""
    picked = []
    for task in dict.fromkeys(r["task_name"] for r in summary_records):
        recs = [r for r in summary_records if r["task_name"] == task and r.get("video")]
        if not recs:
            continue
        best = next((r for r in recs if r["success"]), recs[0])
        dst = out / f"rollout_{task}.{fmt}"
        shutil.copyfile(eval_dir / best["video"], dst)
        picked.append(dst)
    return picked


def success_table(tasks_summary: list[dict], demos: dict) -> str:
    lines = ["| task | expert demos (train) | eval episodes (held-out) | successes | success rate |",
             "|---|---:|---:|---:|---:|"]
    for t in tasks_summary:
        rate = t["success_rate"]
        lines.append(f"| {t['task_name']} | {demos.get(t['task_name'], 0)} | {t['episodes']} | {t['successes']} | "
                     f"{'—' if rate is None else f'{100 * rate:.0f}%'} |")
    return "\n".join(lines)


def write_report(out: Path, s: DemoSettings, summary: dict, times: dict, demos: dict, losses, cfg,
                 rollouts: list[Path], load: tuple) -> Path:
    stage_rows = "\n".join(f"| {k} | {v:.0f} |" for k, v in times.items())
    m, v, t = cfg.model, cfg.vla, cfg.train
    settings = (f"tasks {', '.join(s.tasks)}; {s.episodes} expert episodes per task recorded (placements of MT1 "
                f"seeds {', '.join(map(str, train_seeds(s)))}), evaluated on placements 0–{s.eval_episodes - 1} of "
                f"MT1 seed {EVAL_SEED}; "
                f"{s.image_size} px cameras {', '.join(f'`{c}`' for c in s.cameras)} (fast render, goal marker radius "
                f"{s.goal_marker_radius} m); experts steering the tool centre point: "
                f"{', '.join(s.expert_tcp_tasks) or 'none'}; objective `{v.objective}`, chunk {v.chunk} "
                f"(executed open loop), width {m.hidden_size}, {m.num_hidden_layers} decoder layers, "
                f"{m.vision.depth}-block ViT; {t.steps} steps × batch {t.batch_size}, AdamW lr {t.learning_rate} "
                f"(×0.1 from step {t.decay_at}); eval max {s.eval_max_steps} steps per episode; seed {s.seed}.")
    first, last = (losses[0][1], losses[-1][1]) if losses else (float("nan"), float("nan"))
    videos = "\n".join(f"![{p.stem}]({p.name})" for p in rollouts) or "(no videos)"
    o = summary["overall"]
    text = f"""# dreamjax demo: a tiny Dream-VLA learns Meta-World on CPU

Closed-loop success on **held-out** placements (the experts were recorded on other ones):

{success_table(summary["tasks"], demos)}

Overall {o["successes"]}/{o["episodes"]}.

## Wall time per stage

| stage | seconds |
|---|---:|
{stage_rows}
| **total** | **{sum(times.values()):.0f}** |

Machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at
the end of the run.

## Settings

{settings}

## Training loss

L1 loss on normalized actions: {first:.4f} at step {losses[0][0] if losses else 0} → {last:.4f} at step
{losses[-1][0] if losses else 0}.

![loss](loss.png)

## Rollouts

{videos}

Every episode's record and video: `eval/` (`eval/results.md`); the dataset: `data/`; the checkpoint:
`train/checkpoints/`.
"""
    return write_atomic(out / "report.md", text)


# ------------------------------------------------------------------------------------------------ run
def run(out_dir: str | Path, settings: DemoSettings = DemoSettings()) -> dict:
    """The whole demo (module docstring); returns the summary also written to ``OUT/summary.json``."""
    from dreamjax.eval.collect import collect_expert_dataset
    from dreamjax.eval.metaworld_sim import import_metaworld
    from dreamjax.train.loop import train

    s = settings.validate()
    import_metaworld()  # fail before anything is written when the extra is missing
    out = Path(out_dir)
    prepare_out(out)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    log.info("[1/5 collect] %d expert episodes per task of %s at %d px", s.episodes, ", ".join(s.tasks),
             s.image_size)
    data_path, stats = collect_expert_dataset(s.tasks, s.episodes, out / "data", image_size=s.image_size,
                                              max_steps=s.collect_max_steps, camera=s.cameras, fast_render=True,
                                              env_seed=train_seeds(s),
                                              goal_marker_radius=s.goal_marker_radius,
                                              expert_tcp_tasks=s.expert_tcp_tasks)
    times["collect"] = time.perf_counter() - t0
    demos = {k: v["successes"] for k, v in stats.items()}
    log.info("[1/5 collect] done in %.0fs: %s → %s", times["collect"], stats, data_path)

    t0 = time.perf_counter()
    tok = train_tokenizer(s.tasks, out / "tokenizer")
    times["tokenizer"] = time.perf_counter() - t0
    log.info("[2/5 tokenizer] %d tokens (%d action tokens) in %.1fs", len(tok), 256, times["tokenizer"])

    t0 = time.perf_counter()
    cfg = train_config(s, out / "data", out / "tokenizer", len(tok))
    log.info("[3/5 train] %s: %d steps × batch %d (progress every %d steps)", CONFIG, cfg.train.steps,
             cfg.train.batch_size, cfg.train.log_every)
    result = train(cfg, out / "train")
    times["train"] = time.perf_counter() - t0
    losses = read_losses(out / "train" / "metrics.jsonl")
    log.info("[3/5 train] done in %.0fs; loss %.4f → %.4f", times["train"], losses[0][1], losses[-1][1])

    t0 = time.perf_counter()
    checkpoint = out / "train" / "checkpoints" / str(result["step"])
    log.info("[4/5 eval] %d held-out episodes per task (MT1 seed %d), closed loop", s.eval_episodes, EVAL_SEED)
    summary = evaluate_policy(s, checkpoint, out / "eval", int(cfg.vla.chunk))
    times["eval"] = time.perf_counter() - t0
    for t in summary["tasks"]:
        log.info("[4/5 eval] %s: %d/%d successes", t["task_name"], t["successes"], t["episodes"])

    t0 = time.perf_counter()
    plot_loss(losses, out / "loss.png", f"{CONFIG}: training loss")
    records = json.loads((out / "eval" / "results.json").read_text())["records"]
    rollouts = pick_rollouts(out / "eval", records, out, s.video) if s.video != "none" else []
    times["report"] = time.perf_counter() - t0
    report = write_report(out, s, summary, times, demos, losses, cfg, rollouts, os.getloadavg())
    total = time.perf_counter() - t_all
    result_doc = dict(
        success={t["task_name"]: dict(successes=t["successes"], episodes=t["episodes"],
                                      success_rate=t["success_rate"]) for t in summary["tasks"]},
        expert_demos=demos, stage_seconds={k: round(v, 1) for k, v in times.items()}, total_seconds=round(total, 1),
        final_loss=losses[-1][1], settings=dataclasses.asdict(s), report=str(report),
        load_average=list(os.getloadavg()))
    write_atomic(out / "summary.json", json.dumps(result_doc, indent=1))
    log.info("[5/5 report] %s (total %.0fs)", report, total)
    return result_doc


# ------------------------------------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument("--out", default="outputs/demo", help="report folder (default outputs/demo)")
    p.add_argument("--tasks", default=",".join(d.tasks), help="Meta-World tasks, comma-separated")
    p.add_argument("--episodes", type=int, default=None, help=f"expert episodes per task (default {d.episodes})")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help=f"held-out closed-loop episodes per task (default {d.eval_episodes})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {d.steps})")
    p.add_argument("--image-size", type=int, default=None, help=f"camera pixels, multiple of 28 (default "
                   f"{d.image_size})")
    p.add_argument("--cameras", default=None, help=f"Meta-World cameras, comma-separated, one or two (default "
                   f"{','.join(d.cameras)})")
    p.add_argument("--video", choices=("gif", "mp4", "none"), default="gif")
    p.add_argument("--quick", action="store_true", help="1–2 minute smoke run of the same path (reach-v3, 3 "
                   "episodes, 30 steps): checks the plumbing, not the learning")
    p.add_argument("--smoke", action="store_true", help="the inference-only smoke demo (dreamjax.smoke): tokenizer, "
                   "processor, template, tiny Dream-VL checkpoint, generate")
    p.add_argument("--seed", type=int, default=0)
    # config overrides (--config.train.learning_rate=3e-4 …) arrive as args.overrides (dreamjax.cli)


def settings_from_args(args) -> DemoSettings:
    from dreamjax.eval.cli import comma_names

    base = dict(QUICK) if args.quick else {}
    if args.tasks != ",".join(DemoSettings().tasks) or not args.quick:
        base["tasks"] = comma_names(args.tasks)
    for name in ("episodes", "eval_episodes", "steps", "image_size"):
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    if getattr(args, "cameras", None):
        base["cameras"] = comma_names(args.cameras)
    return DemoSettings(**base, video=args.video, seed=args.seed, overrides=tuple(getattr(args, "overrides", ()))).validate()


def main(args) -> dict:
    if args.smoke:
        from dreamjax import smoke

        return smoke.run(args.out, seed=args.seed)
    return run(args.out, settings_from_args(args))
