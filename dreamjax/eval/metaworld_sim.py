"""Meta-World (v3, ``pip install 'dreamjax[metaworld]'``) behind the rollout harness.

A "suite" is a list of Meta-World task names (``reach-v3``, ``push-v3``, …); a task's "initial states" are the
50 goal/object placements ``metaworld.MT1(name, seed)`` samples (``train_tasks``), so ``init_index`` picks one
and the same (seed, index) always gives the same scene. Observations: the camera images (``corner2`` by
default; ``camera`` may name several, e.g. ``("corner3", "corner")``, stacked in that order) rendered at
``image_size`` through MuJoCo (``MUJOCO_GL=egl`` off-screen; MuJoCo's rows come out bottom-up, so they are
flipped to upright), ``proprio`` = hand position (3) + gripper opening (1) — the first
4 entries of Meta-World's 39-d state —, a fixed English instruction per task, the full ``state`` and ``tcp``
(the tool centre point between the finger pads, where Meta-World measures reach success; the hand in
``state[:3]`` is 4.5 cm above it). Success is Meta-World's
``info["success"]``. Actions: 4-d (Δx, Δy, Δz, gripper) in [-1, 1], clipped here; no settle steps.

``fast_render=True`` turns off shadows, reflections and multisample anti-aliasing (``model.light_castshadow``,
``model.mat_reflectance``, ``model.vis.quality.offsamples``): the same scene with flatter lighting and harder
edges, much cheaper to render with software OpenGL (llvmpipe; shadows and reflections cost 4–7×, the 4× MSAA
another ~2.5× at 84 px: 65 → 23 ms per frame measured) — use it for collection and evaluation alike (the
embedded demo does), never for one and not the other.

``goal_marker_radius`` redraws the goal marker (the ``goal`` site: a 2 cm sphere, rendering only — sites take
no part in the physics or in ``info["success"]``) at that radius. At 84 px a 2 cm sphere is one or two pixels,
next to a robot of the same red; the embedded demo draws it at 5 cm, the success radius of reach and push, so
the marker shows the region the hand (or puck) must enter. Same rule as ``fast_render``: both or neither.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from dreamjax.eval.episodes import Episode

NUM_INIT_STATES = 50            # MT1 samples 50 placements per task
DEFAULT_MAX_STEPS = 200         # the scripted experts finish reach/push well within it (env limit: 500)
INSTRUCTIONS = {
    "reach-v3": "reach the red goal position",
    "push-v3": "push the puck to the green goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "window-open-v3": "open the window",
    "window-close-v3": "close the window",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
}


def instruction_for(task_name: str) -> str:
    """The task's instruction (table above; otherwise the task name in words, e.g. "plate slide back")."""
    return INSTRUCTIONS.get(task_name, task_name.removesuffix("-v3").replace("-", " "))


def import_metaworld():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld
    except ImportError as e:
        raise ImportError(f"Meta-World is not installed ({e}): pip install 'dreamjax[metaworld]'") from None
    return metaworld


class MetaWorldSim:
    """Meta-World tasks through the harness (see the module docstring)."""

    settle_steps = 0
    settle_action = None

    def __init__(self, tasks: Sequence[str], *, seed: int = 0, max_steps: int = DEFAULT_MAX_STEPS,
                 image_size: int = 224, camera: str | Sequence[str] = "corner2", render: bool = True,
                 suite: str = "metaworld",
                 fast_render: bool = False, goal_marker_radius: float | None = None):
        metaworld = import_metaworld()
        unknown = [t for t in tasks if t not in metaworld.ALL_V3_ENVIRONMENTS]
        if unknown:
            raise ValueError(f"unknown Meta-World task(s) {unknown}; e.g. {sorted(metaworld.ALL_V3_ENVIRONMENTS)[:5]}")
        if not 1 <= max_steps <= 500:
            raise ValueError(f"max_steps {max_steps}: Meta-World episodes are at most 500 steps")
        self.suite, self.seed, self._max_steps = suite, seed, max_steps
        self.cameras = (camera,) if isinstance(camera, str) else tuple(camera)
        if not self.cameras:
            raise ValueError("camera: name at least one Meta-World camera, e.g. 'corner2'")
        self.camera = self.cameras[0]
        self.image_size, self.render, self.fast_render = image_size, render, fast_render
        if goal_marker_radius is not None and not 0 < goal_marker_radius <= 0.2:
            raise ValueError(f"goal_marker_radius {goal_marker_radius}: expected metres in (0, 0.2]")
        self.goal_marker_radius = goal_marker_radius
        self._tasks = list(tasks)
        self._benchmarks: dict = {}
        self._envs: dict = {}
        self._camera_ids: dict = {}
        self._env = None
        self._task_name = ""

    def task_names(self) -> list[str]:
        return list(self._tasks)

    def num_init_states(self) -> list[int]:
        return [NUM_INIT_STATES] * len(self._tasks)

    def max_steps(self, task_id: int) -> int:
        return self._max_steps

    def _make(self, name: str):
        if name not in self._envs:
            metaworld = import_metaworld()
            self._benchmarks[name] = metaworld.MT1(name, seed=self.seed)
            kw = dict(render_mode="rgb_array", camera_name=self.camera, width=self.image_size,
                      height=self.image_size) if self.render else {}
            env = self._benchmarks[name].train_classes[name](**kw)
            self._camera_ids[name] = self._find_cameras(env)
            if self.fast_render:
                env.model.light_castshadow[:] = 0
                env.model.mat_reflectance[:] = 0
                env.model.vis.quality.offsamples = 0  # read when the offscreen context is made (first render)
            if self.goal_marker_radius is not None:
                import mujoco

                goal = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
                if goal < 0:
                    raise ValueError(f"{name}: no 'goal' site to draw at goal_marker_radius")
                env.model.site_size[goal] = self.goal_marker_radius
            self._envs[name] = env
        return self._envs[name]

    def _find_cameras(self, env) -> list[int]:
        import mujoco

        ids = [mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in self.cameras]
        unknown = [c for c, i in zip(self.cameras, ids) if i < 0]
        if unknown:
            known = [mujoco.mj_id2name(env.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(env.model.ncam)]
            raise ValueError(f"unknown Meta-World camera(s) {unknown}; this scene has {known}")
        return ids

    def reset(self, episode: Episode) -> dict:
        if episode.task_name not in self._tasks:
            raise ValueError(f"episode {episode.key}: task {episode.task_name!r} is not in this suite {self._tasks}")
        env = self._make(episode.task_name)
        env.set_task(self._benchmarks[episode.task_name].train_tasks[episode.init_index])
        state, _ = env.reset()
        self._env, self._task_name = env, episode.task_name
        return self._observe(state)

    def _observe(self, state: np.ndarray) -> dict:
        images = None
        if self.render:
            renderer = self._env.mujoco_renderer
            views = []
            for cam in self._camera_ids[self._task_name]:  # one offscreen context, pointed at each camera in turn
                renderer.camera_id = cam
                views.append(self._env.render()[::-1])  # bottom-up rows → upright
            images = np.ascontiguousarray(np.stack(views))
        return dict(images=images, proprio=np.asarray(state[:4], np.float32), instruction=instruction_for(
            self._task_name), state=state, tcp=np.array(self._env.tcp_center, np.float64))

    def step(self, action: np.ndarray) -> tuple[dict, bool]:
        state, _, _, _, info = self._env.step(np.asarray(action, np.float32))
        return self._observe(state), bool(info["success"] > 0.5)

    def postprocess_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, np.float32)
        if action.shape != (4,):
            raise ValueError(f"Meta-World actions are 4-d (dx, dy, dz, gripper), got shape {action.shape}")
        return np.clip(action, -1.0, 1.0)

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
