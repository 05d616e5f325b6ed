"""The policy interface of the rollout harness, and its adapters.

A policy sees one observation dict per query —

    "images":      uint8 [num_cameras, H, W, 3]   (primary first; what the simulator wrapper prepared)
    "proprio":     float32 [proprio_dim]           raw (un-normalized) robot state
    "instruction": str
    "state":       the simulator's own observation (scripted experts read it; learned policies must not)

— and returns an action chunk float32 [chunk, action_dim] in the simulator's action units; the harness runs
the first ``open_loop_steps`` of it before asking again (spec §9: 8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from dreamjax.eval.episodes import Episode


class Policy(Protocol):
    def reset(self, episode: Episode) -> None:
        """Called before each episode (seeds, per-task state)."""

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Observation → action chunk [chunk, action_dim]."""


def check_chunk(chunk: Any, where: str) -> np.ndarray:
    out = np.asarray(chunk, np.float32)
    if out.ndim == 1:
        out = out[None]
    if out.ndim != 2 or out.shape[0] < 1:
        raise ValueError(f"{where}: policy returned shape {np.shape(chunk)}, expected [chunk, action_dim]")
    if not np.isfinite(out).all():
        raise ValueError(f"{where}: policy returned non-finite actions")
    return out


class MetaWorldExpertPolicy:
    """Meta-World's scripted expert for the episode's task (``metaworld.policies``), one action per query.

    It reads the full state vector (``obs["state"]``); the harness only needs images for the video.

    ``tcp_tasks``: tasks whose expert steers the tool centre point instead of the hand body. Meta-World's reach
    expert moves the *hand* (``state[:3]``) onto the goal, but success is measured at the TCP (between the
    finger pads, 4.5 cm below the hand): its demonstrations stop on the rim of the 5 cm success sphere, where an
    imitator that lands 1 cm off fails about half the time. For these tasks the same expert code is given the
    TCP (``obs["tcp"]``, :class:`~dreamjax.eval.metaworld_sim.MetaWorldSim`) as its hand position, so it aims
    at the centre of the sphere. Default: none (Meta-World's experts as published)."""

    def __init__(self, tcp_tasks: Sequence[str] = ()):
        self._policy = None
        self._task = ""
        self.tcp_tasks = frozenset(tcp_tasks)

    def reset(self, episode: Episode) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        if episode.task_name not in ENV_POLICY_MAP:
            raise ValueError(f"no scripted Meta-World policy for task {episode.task_name!r}; known: "
                             f"{sorted(ENV_POLICY_MAP)[:6]} …")
        self._policy = ENV_POLICY_MAP[episode.task_name]()
        self._task = episode.task_name

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        if self._policy is None:
            raise RuntimeError("MetaWorldExpertPolicy.act called before reset(episode)")
        state = obs["state"]
        if self._task in self.tcp_tasks:
            if "tcp" not in obs:
                raise KeyError(f"MetaWorldExpertPolicy(tcp_tasks={sorted(self.tcp_tasks)}): the observation has no "
                               "'tcp' (MetaWorldSim provides it)")
            state = np.array(state, copy=True)
            state[:3] = obs["tcp"]
        return np.clip(np.asarray(self._policy.get_action(state), np.float32), -1.0, 1.0)[None]


class DreamVLAPolicy:
    """A Dream-VLA model behind the policy interface: ``model.predict_action(images, instruction, proprio,
    unnorm_key, rng)`` (DESIGN.md public API) returns the un-normalized chunk.

    ``rng`` is a fresh key per query, folded from the episode's seed (``Episode.episode_seed``) and the query
    count, so a rerun of an episode draws the same noise whatever process runs it. The reference seeds once
    per process (``set_seed_everywhere``); its discrete-diffusion decoding at temperature 0 uses no noise, the
    flow/DDIM heads do. Gripper post-processing is the simulator's (LIBERO: ``libero.postprocess_action``)."""

    def __init__(self, model, unnorm_key: str | None = None, use_proprio: bool = True):
        self.model, self.unnorm_key, self.use_proprio = model, unnorm_key, use_proprio
        self._key = None
        self._queries = 0

    def reset(self, episode: Episode) -> None:
        import jax

        self._key = jax.random.key(episode.episode_seed)
        self._queries = 0

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        import jax

        if self._key is None:
            raise RuntimeError("DreamVLAPolicy.act called before reset(episode)")
        rng = jax.random.fold_in(self._key, self._queries)
        self._queries += 1
        proprio = obs.get("proprio") if self.use_proprio else None
        return check_chunk(self.model.predict_action(obs["images"], obs["instruction"], proprio=proprio,
                                                     unnorm_key=self.unnorm_key, rng=rng), "DreamVLA.predict_action")
