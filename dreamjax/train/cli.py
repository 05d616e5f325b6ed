"""``dreamjax train``: run, resume, or compile-only-check a training config.

    dreamjax train --config configs/dream_vl_tiny_train.py --workdir runs/tiny [--resume] [--config.train.steps=50]
    dreamjax train --config configs/dream_vl_7b_sft.py --compile-only --topology v5p-8
    dreamjax train ... --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0    (explicit multi-process)

On TPU slices / SLURM, ``jax.distributed`` configures itself (:mod:`dreamjax.train.distributed`). SIGTERM
saves a checkpoint and exits 0.
"""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train on a device mesh (orbax checkpoints, TensorBoard, multi-host)")
    p.add_argument("--config", required=True, help="ml_collections config file (configs/*.py)")
    p.add_argument("--workdir", help="run directory: checkpoints/, metrics.jsonl, tensorboard/ (required to train)")
    p.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --workdir")
    p.add_argument("--compile-only", action="store_true",
                   help="AOT-compile the configured step for --topology (needs libtpu) and print per-chip memory")
    p.add_argument("--topology", default="v5p-8", help="TPU slice for --compile-only, e.g. v5p-8, v4-32, v5e-16")
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (explicit multi-process start)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.set_defaults(fn=cmd_train)


def cmd_train(args) -> int:
    from dreamjax.config_loader import load_config

    cfg = load_config(args.config, args.overrides)
    if args.compile_only:
        from dreamjax.train.aot import compile_only, format_report

        report = compile_only(cfg, args.topology)
        print(format_report(report))
        print(json.dumps(report))
        return 1 if report.get("fits") is False else 0  # does not fit the chip's HBM: a failing check
    if not args.workdir:
        raise ValueError("dreamjax train: --workdir is required (where checkpoints and metrics go)")
    from dreamjax.train.distributed import initialize

    initialize(args.coordinator, args.num_processes, args.process_id)
    from dreamjax.train.loop import train

    summary = train(cfg, args.workdir, resume=args.resume)
    print(json.dumps({"step": summary["step"], "preempted": summary["preempted"], **summary["metrics"]}))
    return 0
