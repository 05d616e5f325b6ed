"""``dreamjax eval ...``:

  dreamjax eval libero    --model CKPT --suite libero_10 [--trials 50] [--tasks 0,3] [--out DIR] [--video mp4]
  dreamjax eval metaworld --policy expert|CKPT --tasks reach-v3,push-v3 [--trials 10] [--max-steps 200]
                          [--expert-tcp-tasks reach-v3]   (the expert as `eval collect` recorded it)
  dreamjax eval vl        --model CKPT --bench FILE.jsonl [--max-new-tokens 16 --steps 16]
  dreamjax eval offline   --model CKPT --data-dir DIR --mixture NAME [--split val]   action L1, token accuracy
  dreamjax eval merge     OUT                        merge independent processes' records
  dreamjax eval collect   --tasks reach-v3,push-v3 --episodes 20 --data-dir DIR   expert demos → RLDS

Processes: under ``jax.distributed`` (``--coordinator/--num-processes/--process-id``, or auto-detected on TPU
pods / SLURM) episodes are split over the processes and process 0 merges; independent launches take
``--process-index I --process-count N`` and are merged afterwards with ``dreamjax eval merge OUT``. A rerun
with the same ``--out`` skips every recorded episode.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("dreamjax.eval")


def comma_names(arg: str) -> tuple[str, ...]:
    """Comma-separated names (cameras, tasks) → a tuple, surrounding blanks and empty items dropped:
    ``"reach-v3, push-v3,"`` → ``("reach-v3", "push-v3")``. Shared by ``dreamjax eval`` and ``dreamjax demo``."""
    return tuple(c.strip() for c in arg.split(",") if c.strip())


def _expert_tcp_tasks(args, tasks: tuple[str, ...]) -> tuple[str, ...]:
    """``--expert-tcp-tasks``: each must be one of ``--tasks`` and the policy the scripted expert."""
    tcp = comma_names(args.expert_tcp_tasks)
    if tcp and getattr(args, "policy", "expert") != "expert":
        raise ValueError(f"--expert-tcp-tasks {args.expert_tcp_tasks!r} steers Meta-World's scripted expert; "
                         f"it has no meaning with --policy {args.policy!r}")
    unknown = [t for t in tcp if t not in tasks]
    if unknown:
        raise ValueError(f"--expert-tcp-tasks: {', '.join(unknown)} not among --tasks {', '.join(tasks)}")
    return tcp


def _int_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--tasks {text!r}: expected comma-separated task indices, e.g. 0,3,7") from None


def _add_common(p, out_default: str) -> None:
    p.add_argument("--out", default=out_default, help="output dir: records/, videos/, results.json, results.md")
    p.add_argument("--process-index", type=int, help="this process among independent launches (with --process-count)")
    p.add_argument("--process-count", type=int)
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (explicit jax.distributed start)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)


def _add_rollout(p) -> None:
    p.add_argument("--trials", type=int, help="initial states per task (LIBERO default 50, Meta-World 10)")
    p.add_argument("--first-init", type=int, default=0, help="index of the first initial state")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--open-loop-steps", type=int, default=8)
    p.add_argument("--video", default="mp4", choices=["mp4", "gif", "none"])
    p.add_argument("--unnorm-key", help="dataset_statistics.json key to un-normalize actions (default: the only one)")
    p.add_argument("--no-proprio", action="store_true", help="do not pass proprio to the policy")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--retry-errors", action="store_true", help="rerun recorded episodes that ended in an exception")


def _start_processes(args) -> None:
    from dreamjax.train.distributed import initialize  # the one multi-host start-up helper of the project

    initialize(args.coordinator, args.num_processes, args.process_id)


def _vla_policy(path: str, args):
    from dreamjax.eval.policy import DreamVLAPolicy
    from dreamjax.vla.policy import DreamVLA

    return DreamVLAPolicy(DreamVLA.from_pretrained(path, dtype=args.dtype), unnorm_key=args.unnorm_key,
                          use_proprio=not args.no_proprio)


def _print_summary(summary) -> None:
    if summary is not None:
        print(json.dumps(summary.get("overall", summary), indent=2))


def cmd_libero(args) -> int:
    from dreamjax.eval.episodes import plan_episodes
    from dreamjax.eval.libero import LiberoSim
    from dreamjax.eval.rollout import RolloutSettings, evaluate

    _start_processes(args)
    settings = RolloutSettings(open_loop_steps=args.open_loop_steps, video=args.video).validate()
    policy = _vla_policy(args.model, args)  # a bad checkpoint fails before the simulator's slow set-up
    sim = LiberoSim(args.suite, center_crop=not args.no_center_crop, max_steps=args.max_steps)
    plan = plan_episodes(args.suite, sim.task_names(), args.trials or 50, seed=args.seed,
                         num_init_states=sim.num_init_states(), task_ids=_int_list(args.tasks),
                         first_init=args.first_init)
    if args.unnorm_key is None:  # the reference's rule: the suite's statistics, or its "_no_noops" variant
        from dreamjax.eval.libero import unnorm_key_for

        policy.unnorm_key = unnorm_key_for(args.suite, policy.model.norm_stats)
    _print_summary(evaluate(sim, policy, plan, args.out, settings=settings, process_index=args.process_index,
                            process_count=args.process_count,
                            retry_errors=args.retry_errors, run_settings=dict(simulator="libero", suite=args.suite, model=args.model,
                                              center_crop=not args.no_center_crop, seed=args.seed,
                                              max_steps=sim.max_steps(0))))
    return 0


def cmd_metaworld(args) -> int:
    from dreamjax.eval.episodes import plan_episodes
    from dreamjax.eval.metaworld_sim import MetaWorldSim
    from dreamjax.eval.policy import MetaWorldExpertPolicy
    from dreamjax.eval.rollout import RolloutSettings, evaluate

    _start_processes(args)
    expert = args.policy == "expert"
    settings = RolloutSettings(open_loop_steps=1 if expert else args.open_loop_steps, video=args.video).validate()
    tasks = comma_names(args.tasks)
    tcp_tasks = _expert_tcp_tasks(args, tasks)
    policy = MetaWorldExpertPolicy(tcp_tasks=tcp_tasks) if expert else _vla_policy(args.policy, args)
    sim = MetaWorldSim(list(tasks), seed=args.env_seed, max_steps=args.max_steps, image_size=args.image_size,
                       camera=comma_names(args.camera), render=not (expert and args.video == "none"), fast_render=args.fast_render)
    plan = plan_episodes("metaworld", sim.task_names(), args.trials or 10, seed=args.seed,
                         num_init_states=sim.num_init_states(), first_init=args.first_init)
    _print_summary(evaluate(sim, policy, plan, args.out, settings=settings, process_index=args.process_index,
                            process_count=args.process_count,
                            retry_errors=args.retry_errors, run_settings=dict(simulator="metaworld", tasks=list(tasks), policy=args.policy,
                                              expert_tcp_tasks=list(tcp_tasks),
                                              max_steps=args.max_steps, env_seed=args.env_seed, seed=args.seed)))
    return 0


def cmd_vl(args) -> int:
    from dreamjax.eval.vl_bench import GenerationSettings, evaluate_vl, load_benchmark
    from dreamjax.pretrained import DreamVL

    _start_processes(args)
    items = load_benchmark(args.bench, args.name)
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens, steps=args.steps, alg=args.alg,
                             temperature=args.temperature, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    model = DreamVL.from_pretrained(args.model, dtype=args.dtype)
    _print_summary(evaluate_vl(model, items, args.out, gen, process_index=args.process_index,
                               process_count=args.process_count))
    return 0


def cmd_merge(args) -> int:
    from pathlib import Path

    plan = Path(args.out) / "plan.json"
    if not plan.is_file():
        raise FileNotFoundError(f"{plan}: no evaluation plan (is {args.out} an evaluation output directory?)")
    if json.loads(plan.read_text()).get("kind") == "vl":
        from dreamjax.eval.vl_bench import merge_vl_dir

        _print_summary(merge_vl_dir(args.out))
    else:
        from dreamjax.eval.rollout import merge_dir

        _print_summary(merge_dir(args.out))
    return 0


def cmd_offline(args) -> int:
    from dreamjax.eval.offline import offline_metrics
    from dreamjax.vla.policy import DreamVLA

    _start_processes(args)
    policy = DreamVLA.from_pretrained(args.model, dtype=args.dtype)
    data = dict(data_dir=args.data_dir, mixture=args.mixture, split=args.split)
    _print_summary(offline_metrics(policy, data, args.out, batch_size=args.batch_size, max_frames=args.max_frames,
                                   seed=args.seed))
    return 0


def cmd_collect(args) -> int:
    from dreamjax.eval.collect import collect_expert_dataset

    tasks = comma_names(args.tasks)
    path, stats = collect_expert_dataset(list(tasks), args.episodes, args.data_dir,
                                         name=args.name, image_size=args.image_size, max_steps=args.max_steps,
                                         env_seed=args.env_seed, first_init=args.first_init,
                                         camera=comma_names(args.camera),
                                         file_format=args.file_format, overwrite=args.overwrite,
                                         fast_render=args.fast_render,
                                         expert_tcp_tasks=_expert_tcp_tasks(args, tasks))
    print(json.dumps(dict(path=str(path), tasks=stats), indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="closed-loop (LIBERO, Meta-World) and VL evaluation, sharded + resumable")
    sub = p.add_subparsers(dest="eval_command", required=True)

    q = sub.add_parser("libero", help="LIBERO closed loop with the reference protocol (spec §9)")
    q.add_argument("--model", required=True, help="Dream-VLA checkpoint (dreamjax or reference fine-tuned dir)")
    q.add_argument("--suite", required=True,
                   choices=["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"])
    q.add_argument("--tasks", help="comma-separated task indices (default: all)")
    q.add_argument("--no-center-crop", action="store_true", help="for policies trained without random crops")
    q.add_argument("--max-steps", type=int, help="policy steps per episode (default: the suite's, spec §9); for smoke runs")
    _add_rollout(q)
    _add_common(q, "outputs/eval_libero")
    q.set_defaults(fn=cmd_libero)

    q = sub.add_parser("metaworld", help="Meta-World closed loop (scripted expert or a Dream-VLA checkpoint)")
    q.add_argument("--policy", required=True, help="'expert' (Meta-World's scripted policy) or a checkpoint path")
    q.add_argument("--tasks", required=True, help="comma-separated task names, e.g. reach-v3,push-v3")
    q.add_argument("--max-steps", type=int, default=200)
    q.add_argument("--env-seed", type=int, default=0, help="seed of metaworld.MT1 (which 50 placements exist)")
    q.add_argument("--image-size", type=int, default=224)
    q.add_argument("--camera", default="corner2", help="Meta-World camera(s), comma-separated (as the data was "
                   "collected: the policy gets one image per camera)")
    q.add_argument("--fast-render", action="store_true", help="no shadows/reflections/MSAA (as the data was collected)")
    q.add_argument("--expert-tcp-tasks", default="", help="with --policy expert: tasks (comma-separated) whose "
                   "expert steers the tool centre point, as `eval collect --expert-tcp-tasks` recorded them")
    _add_rollout(q)
    _add_common(q, "outputs/eval_metaworld")
    q.set_defaults(fn=cmd_metaworld)

    q = sub.add_parser("vl", help="VL generation over a local JSONL benchmark (exact match, relaxed accuracy)")
    q.add_argument("--model", required=True, help="Dream-VL checkpoint with tokenizer files")
    q.add_argument("--bench", required=True, help="JSONL: image, question, answers per line")
    q.add_argument("--name", help="benchmark name (default: the file's stem)")
    q.add_argument("--max-new-tokens", type=int, default=16)
    q.add_argument("--steps", type=int, default=16)
    q.add_argument("--alg", default="maskgit_plus", choices=["origin", "maskgit_plus", "topk_margin", "entropy"])
    q.add_argument("--temperature", type=float, default=0.0)
    q.add_argument("--min-pixels", type=int, default=200704)
    q.add_argument("--max-pixels", type=int, default=12845056)
    q.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    _add_common(q, "outputs/eval_vl")
    q.set_defaults(fn=cmd_vl)

    q = sub.add_parser("offline", help="action L1 and token accuracy on held-out RLDS episodes")
    q.add_argument("--model", required=True, help="Dream-VLA checkpoint")
    q.add_argument("--data-dir", required=True, help="RLDS root holding the dataset(s)")
    q.add_argument("--mixture", required=True, help="a registered dataset or mixture name")
    q.add_argument("--split", default="val")
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--max-frames", type=int, help="cap on frames per process")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    for flag in ("--coordinator", "--num-processes", "--process-id"):
        q.add_argument(flag, type=int if flag != "--coordinator" else str)
    q.add_argument("--out", default="outputs/eval_offline")
    q.set_defaults(fn=cmd_offline)

    q = sub.add_parser("collect", help="Meta-World scripted-expert episodes → RLDS (training data for the demo)")
    q.add_argument("--tasks", required=True, help="comma-separated Meta-World task names")
    q.add_argument("--episodes", type=int, required=True, help="episodes (initial states) per task")
    q.add_argument("--data-dir", required=True, help="RLDS root: writes DATA_DIR/NAME/1.0.0/")
    q.add_argument("--name", default="metaworld_expert")
    q.add_argument("--image-size", type=int, default=128)
    q.add_argument("--max-steps", type=int, default=200)
    q.add_argument("--env-seed", type=int, default=0)
    q.add_argument("--first-init", type=int, default=0)
    q.add_argument("--camera", default="corner2", help="Meta-World camera(s), comma-separated: image, image2, …")
    q.add_argument("--expert-tcp-tasks", default="", help="tasks (comma-separated) whose expert steers the tool "
                   "centre point instead of the hand (e.g. reach-v3: demonstrations end inside the success sphere)")
    q.add_argument("--file-format", default="tfrecord", choices=["tfrecord", "array_record"])
    q.add_argument("--fast-render", action="store_true", help="no shadows/reflections: ~4-7x cheaper on CPU")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(fn=cmd_collect)

    q = sub.add_parser("merge", help="merge the records of independently launched eval processes")
    q.add_argument("out", help="the evaluation's output directory")
    q.set_defaults(fn=cmd_merge)
