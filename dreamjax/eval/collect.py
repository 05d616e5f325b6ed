"""Meta-World scripted-expert demonstrations → an RLDS dataset on disk (the embedded demo's training data).

Each episode is the expert (``metaworld.policies``) run through :class:`~dreamjax.eval.metaworld_sim.MetaWorldSim`
— the same observations the closed-loop eval later gives a learned policy — from initial states
``first_init … first_init + episodes_per_task − 1`` of every task (evaluate on other indices to test on
unseen placements). Written with dreamjax's RLDS writer (``dreamjax.data.rlds.writer``: features.json,
dataset_info.json, TFRecord shards, no TensorFlow) in this layout (:func:`metaworld_features`) ::

    steps/observation/image   uint8 [S, S, 3] JPEG   the first camera (corner2 by default), upright
    steps/observation/image2  uint8 [S, S, 3] JPEG   the second camera, when two are recorded (image3, …)
    steps/observation/state   float32 [4]            hand xyz + gripper opening (MetaWorldSim's proprio)
    steps/action              float32 [4]            the expert's (Δx, Δy, Δz, gripper) in [-1, 1]
    steps/language_instruction                       the task's instruction (metaworld_sim.INSTRUCTIONS)
    steps/{is_first, is_last, is_terminal, reward, discount}   RLDS flags (reward 1 on a successful last step)
    episode_metadata/{file_path, task, init_index, success}

Step t pairs the observation before action t with action t. Episodes the expert does not finish within
``max_steps`` are left out by default (``only_successful``); the count is logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dreamjax.eval.episodes import plan_episodes
from dreamjax.eval.policy import MetaWorldExpertPolicy

log = logging.getLogger("dreamjax.eval")
DATASET_NAME, DATASET_VERSION = "metaworld_expert", "1.0.0"


def image_keys(num_cameras: int) -> list[str]:
    """Observation keys of the cameras, in order: ``image``, ``image2``, ``image3``, …"""
    return ["image"] + [f"image{i}" for i in range(2, num_cameras + 1)]


def metaworld_features(image_size: int, cameras: Sequence[str] = ("corner2",)):
    import tensorflow_datasets as tfds

    f = tfds.features
    images = {key: f.Image(shape=(image_size, image_size, 3), dtype=np.uint8, encoding_format="jpeg",
                           doc=f"Camera RGB observation ({cam}), upright.")
              for key, cam in zip(image_keys(len(cameras)), cameras)}
    return f.FeaturesDict({
        "steps": f.Dataset({
            "observation": f.FeaturesDict({
                **images,
                "state": f.Tensor(shape=(4,), dtype=np.float32, doc="Hand position (3) and gripper opening (1)."),
            }),
            "action": f.Tensor(shape=(4,), dtype=np.float32, doc="Expert action: dx, dy, dz, gripper in [-1, 1]."),
            "is_first": f.Scalar(dtype=np.bool_, doc="True on first step of the episode."),
            "is_last": f.Scalar(dtype=np.bool_, doc="True on last step of the episode."),
            "is_terminal": f.Scalar(dtype=np.bool_, doc="True on the last step of a successful episode."),
            "reward": f.Scalar(dtype=np.float32, doc="1 on the last step of a successful episode, else 0."),
            "discount": f.Scalar(dtype=np.float32, doc="Discount, 1."),
            "language_instruction": f.Text(doc="Language instruction."),
        }),
        "episode_metadata": f.FeaturesDict({
            "file_path": f.Text(doc="metaworld:TASK:init_INDEX"),
            "task": f.Text(doc="Meta-World task name."),
            "init_index": f.Scalar(dtype=np.int32, doc="Index of the MT1 placement."),
            "success": f.Scalar(dtype=np.bool_, doc="Whether the expert succeeded."),
        }),
    })


def expert_episode(sim, policy, episode) -> tuple[dict, bool]:
    """Run the expert once; returns (RLDS episode dict, success)."""
    obs = sim.reset(episode)
    policy.reset(episode)
    steps, success = [], False
    keys = image_keys(len(obs["images"]))
    for _ in range(sim.max_steps(episode.task_id)):
        action = sim.postprocess_action(policy.act(obs)[0])
        steps.append(dict(observation=dict(zip(keys, obs["images"]), state=obs["proprio"]), action=action,
                          language_instruction=obs["instruction"]))
        obs, success = sim.step(action)
        if success:
            break
    n = len(steps)
    for i, s in enumerate(steps):
        last = i == n - 1
        s.update(is_first=i == 0, is_last=last, is_terminal=last and success,
                 reward=np.float32(last and success), discount=np.float32(1.0))
    where = f"seed_{sim.seed}:" if getattr(sim, "seed", 0) else ""  # MT1 seed 0: the name it always had
    meta = dict(file_path=f"metaworld:{episode.task_name}:{where}init_{episode.init_index}", task=episode.task_name,
                init_index=np.int32(episode.init_index), success=success)
    return dict(steps=steps, episode_metadata=meta), success


def collect_expert_dataset(tasks: Sequence[str], episodes_per_task: int, data_dir: str | os.PathLike, *,
                           name: str = DATASET_NAME, version: str = DATASET_VERSION, image_size: int = 128,
                           max_steps: int = 200, env_seed: int | Sequence[int] = 0, first_init: int = 0,
                           camera: str | Sequence[str] = "corner2",
                           only_successful: bool = True, file_format: str = "tfrecord", overwrite: bool = False,
                           fast_render: bool = False, goal_marker_radius: float | None = None,
                           expert_tcp_tasks: Sequence[str] = ()) -> tuple[Path, dict]:
    """Collect and write ``data_dir/name/version/``; returns (that directory, stats per task).

    ``env_seed``: the ``metaworld.MT1`` seed whose 50 placements per task are recorded (``first_init`` …), or a
    list of seeds — then ``episodes_per_task`` may exceed 50 and the placements of the next seed follow when
    one seed's are used up (more distinct goals and object positions than one MT1 draw holds).
    ``camera``: one Meta-World camera name or several (recorded as ``image``, ``image2``, … in that order).
    ``expert_tcp_tasks``: tasks whose expert steers the tool centre point instead of the hand
    (:class:`~dreamjax.eval.policy.MetaWorldExpertPolicy`: for reach, demonstrations that end at the centre of
    the success sphere, not on its rim)."""
    from dreamjax.data.rlds.writer import write_rlds_dataset
    from dreamjax.eval.metaworld_sim import NUM_INIT_STATES, MetaWorldSim

    final = Path(data_dir) / name / version
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (pass overwrite=True / --overwrite to replace it)")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    seeds = [int(env_seed)] if isinstance(env_seed, (int, np.integer)) else [int(x) for x in env_seed]
    blocks, left, start = [], episodes_per_task, first_init  # (seed, first placement, count)
    for seed in seeds:
        n = min(left, NUM_INIT_STATES - start)
        if n > 0:
            blocks.append((seed, start, n))
            left -= n
        start = 0
    if left > 0:
        raise ValueError(f"{episodes_per_task} episodes per task from placement {first_init} need more than the "
                         f"{NUM_INIT_STATES} placements per MT1 seed of env_seed={env_seed}: give more seeds")
    sims = {seed: MetaWorldSim(tasks, seed=seed, max_steps=max_steps, image_size=image_size, camera=camera,
                               fast_render=fast_render, goal_marker_radius=goal_marker_radius) for seed, _, _ in blocks}
    plan = [(sims[seed], ep) for seed, first, n in blocks for ep in plan_episodes(
        "metaworld", list(tasks), n, first_init=first, num_init_states=[NUM_INIT_STATES] * len(tasks))]
    policy = MetaWorldExpertPolicy(tcp_tasks=expert_tcp_tasks)
    episodes, stats = [], {t: dict(episodes=0, successes=0, steps=0) for t in tasks}
    t0 = time.perf_counter()
    try:
        for i, (sim, ep) in enumerate(plan):
            rlds_episode, success = expert_episode(sim, policy, ep)
            s = stats[ep.task_name]
            s["episodes"] += 1
            s["successes"] += int(success)
            if success or not only_successful:
                episodes.append(rlds_episode)
                s["steps"] += len(rlds_episode["steps"])
            log.info("[collect %d/%d] %s seed %d init %d: %s in %d steps (%.0fs so far)", i + 1, len(plan),
                     ep.task_name, sim.seed, ep.init_index, "success" if success else "FAILED", len(rlds_episode["steps"]),
                     time.perf_counter() - t0)
    finally:
        for sim in sims.values():
            sim.close()
    if not episodes:
        raise RuntimeError(f"the expert finished none of {len(plan)} episodes within {max_steps} steps")
    cameras = next(iter(sims.values())).cameras  # camera names as MetaWorldSim read them
    path = write_rlds_dataset(data_dir, name, version, metaworld_features(image_size, cameras), episodes,
                              file_format=file_format, overwrite=overwrite,
                              description=f"Meta-World scripted-expert demonstrations: {', '.join(tasks)}")
    log.info("wrote %d episodes (%d steps) to %s", len(episodes), sum(s["steps"] for s in stats.values()), path)
    return path, stats
