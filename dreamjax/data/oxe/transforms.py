"""Per-dataset standardization transforms (spec §8.3), numpy versions of the reference's ``oxe/transforms.py``.

Input: a trajectory dict with the episode's step fields stacked along time (``observation`` dict,
``action`` array or dict, ``language_instruction`` …) and ``traj_metadata`` (episode-level fields). Output:
the same dict with ``action`` a float32 [T, A] array (EEF_POS: Δxyz, Δrpy, gripper with +1 open / 0 closed),
the observation keys the dataset config names, and ``language_instruction`` [T] strings/bytes.

Differences from the reference, on purpose: depth images are not touched (the Dream-VLA pipeline loads RGB
only); ``euler_from_quaternion`` is the closed form of tensorflow_graphics' ``euler.from_quaternion``
without its float-eps nudges (differences ≲ 1e-6 rad).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np


# ------------------------------------------------------------------------------------------ gripper helpers
def binarize_gripper_actions(actions: np.ndarray) -> np.ndarray:
    """Continuous gripper → {0, 1}: > 0.95 open (1), < 0.05 closed (0); an in-between value takes the value of
    the next decided step (scanning backwards from the end, starting from the raw last value, so a trailing
    in-between run keeps the raw last action — the reference's behaviour)."""
    actions = np.asarray(actions, np.float32)
    open_mask, closed_mask = actions > 0.95, actions < 0.05
    decided = open_mask | closed_mask
    out = np.empty_like(actions)
    carry = actions[-1] if len(actions) else np.float32(0)
    for i in range(len(actions) - 1, -1, -1):
        if decided[i]:
            carry = np.float32(open_mask[i])
        out[i] = carry
    return out


def rel2abs_gripper_actions(actions: np.ndarray) -> np.ndarray:
    """Relative gripper commands (< −0.1 open, > 0.1 close, else no change) → absolute (1 open, 0 closed).
    The state before the first command is the opposite of that command (open when there is none)."""
    actions = np.asarray(actions, np.float32)
    thresholded = np.where(actions < -0.1, 1, np.where(actions > 0.1, -1, 0)).astype(np.int32)
    nonzero = np.flatnonzero(thresholded)
    carry = -thresholded[nonzero[0]] if len(nonzero) else 1
    out = np.empty(len(actions), np.int32)
    for i, t in enumerate(thresholded):
        if t != 0:
            carry = t
        out[i] = carry
    return out.astype(np.float32) / 2 + 0.5


def invert_gripper_actions(actions: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(actions, np.float32)


def euler_from_quaternion(q: np.ndarray) -> np.ndarray:
    """[..., 4] quaternions (x, y, z, w) → [..., 3] roll, pitch, yaw (tensorflow_graphics convention)."""
    q = np.asarray(q, np.float64)
    x, y, z, w = np.moveaxis(q, -1, 0)
    r20 = np.clip(2 * (x * z - w * y), -1.0, 1.0)
    r21, r22 = 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
    r00, r10 = 1 - 2 * (y * y + z * z), 2 * (x * y + w * z)
    r01, r02 = 2 * (x * y - w * z), 2 * (x * z + w * y)
    theta_y = -np.arcsin(r20)
    sign = np.where(np.cos(theta_y) >= 0, 1.0, -1.0)
    general = np.stack([np.arctan2(r21 * sign, r22 * sign), theta_y, np.arctan2(r10 * sign, r00 * sign)], -1)
    s20 = np.where(r20 >= 0, 1.0, -1.0)
    gimbal = np.stack([np.arctan2(-s20 * r01, -s20 * r02), -s20 * np.pi / 2, np.zeros_like(r20)], -1)
    return np.where((np.abs(np.abs(r20) - 1.0) < 1e-6)[..., None], gimbal, general).astype(np.float32)


# ------------------------------------------------------------------------------------------ small helpers
def _col(x) -> np.ndarray:
    """[T] or [T, k] → float32 [T, k]."""
    x = np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float32)


def _cat(*parts) -> np.ndarray:
    return np.concatenate([_col(p) for p in parts], axis=-1)


def _slice_time(traj: dict, sl: slice) -> dict:
    """Apply a time slice to every per-step field (not to ``traj_metadata``)."""
    out = {}
    for k, v in traj.items():
        if k == "traj_metadata":
            out[k] = v
        elif isinstance(v, dict):
            out[k] = _slice_time(v, sl)
        else:
            out[k] = v[sl]
    return out


def _language_from_observation(traj: dict, key: str = "natural_language_instruction") -> dict:
    traj["language_instruction"] = traj["observation"][key]
    return traj


def _eef_gripper_from_state(traj: dict, eef: slice = slice(0, 6), gripper: slice = slice(-1, None),
                            names=("eef_state", "gripper_state")) -> dict:
    state = traj["observation"]["state"]
    traj["observation"][names[0]] = state[:, eef]
    traj["observation"][names[1]] = state[:, gripper]
    return traj


def _wv_rd_gripper(traj: dict, gripper) -> dict:
    a = traj["action"]
    traj["action"] = _cat(a["world_vector"], a["rotation_delta"], gripper)
    return traj


def _clip_invert_last(traj: dict) -> dict:
    a = traj["action"]
    traj["action"] = _cat(a[:, :6], invert_gripper_actions(np.clip(a[:, -1:], 0, 1)))
    return traj


# ------------------------------------------------------------------------------------------ dataset transforms
def libero(traj):
    a = traj["action"]
    traj["action"] = _cat(a[:, :6], invert_gripper_actions(np.clip(a[:, -1:], 0, 1)))
    return _eef_gripper_from_state(traj, slice(0, 6), slice(-2, None), ("EEF_state", "gripper_state"))


def bridge_orig(traj):
    traj = _slice_time(traj, slice(1, None))  # the first step's action is all zeros
    a = traj["action"]
    traj["action"] = _cat(a[:, :6], binarize_gripper_actions(a[:, -1]))
    return _relabel_bridge(traj)


def bridge_oxe(traj):
    traj = _slice_time(traj, slice(1, None))
    traj = _wv_rd_gripper(traj, traj["action"]["open_gripper"])
    return _relabel_bridge(_language_from_observation(traj))


def _relabel_bridge(traj):
    """Actions := state differences (Δ of the first 6 state dims) + the gripper action; last step dropped."""
    state = np.asarray(traj["observation"]["state"], np.float32)
    movement = state[1:, :6] - state[:-1, :6]
    gripper = traj["action"][:-1, -1:]
    traj = _slice_time(traj, slice(None, -1))
    traj["action"] = _cat(movement, gripper)
    return _eef_gripper_from_state(traj, slice(0, 6), slice(-1, None), ("EEF_state", "gripper_state"))


def rt1(traj):
    g = rel2abs_gripper_actions(_col(traj["action"]["gripper_closedness_action"])[:, 0])
    return _language_from_observation(_wv_rd_gripper(traj, g))


def kuka(traj):
    traj = rt1(traj)
    obs = traj["observation"]
    key = "clip_function_input/base_pose_tool_reached"
    obs[key] = _decode_zlib_floats(obs[key], 7)
    obs["gripper_closed"] = _decode_zlib_floats(obs["gripper_closed"], 1)
    return traj


def _decode_zlib_floats(values, width: int) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values.astype(np.float32).reshape(len(values), width)
    return np.stack([np.frombuffer(zlib.decompress(v), np.float32).reshape(-1, width)[0] for v in values])


def taco_play(traj):
    obs = traj["observation"]
    obs["state_eef"], obs["state_gripper"] = obs["robot_obs"][:, :6], obs["robot_obs"][:, 7:8]
    a = traj["action"]["rel_actions_world"]
    traj["action"] = _cat(a[:, :6], np.clip(a[:, -1:], 0, 1))
    return _language_from_observation(traj)


def jaco_play(traj):
    obs = traj["observation"]
    pos = obs["end_effector_cartesian_pos"]
    obs["state_eef"], obs["state_gripper"] = pos[:, :6], pos[:, -1:]
    g = rel2abs_gripper_actions(_col(traj["action"]["gripper_closedness_action"])[:, 0])
    wv = traj["action"]["world_vector"]
    traj["action"] = _cat(wv, np.zeros_like(_col(wv)), g)
    return _language_from_observation(traj)


def berkeley_cable_routing(traj):
    wv = traj["action"]["world_vector"]
    return _language_from_observation(_wv_rd_gripper(traj, np.zeros((len(wv), 1), np.float32)))


def roboturk(traj):
    g = invert_gripper_actions(np.clip(_col(traj["action"]["gripper_closedness_action"]), 0, 1))
    return _language_from_observation(_wv_rd_gripper(traj, g))


viola = roboturk  # same arithmetic: clip to [0, 1], invert


def berkeley_autolab_ur5(traj):
    obs = traj["observation"]
    obs["state"] = obs["robot_state"][:, 6:14]
    g = rel2abs_gripper_actions(_col(traj["action"]["gripper_closedness_action"])[:, 0])
    return _language_from_observation(_wv_rd_gripper(traj, g))


def toto(traj):
    return _language_from_observation(_wv_rd_gripper(traj, traj["action"]["open_gripper"]))


def language_table(traj):
    a = _col(traj["action"])
    traj["action"] = _cat(a, np.zeros_like(a), np.zeros_like(a), np.ones((len(a), 1), np.float32))
    codes = np.asarray(traj["observation"]["instruction"]).reshape(len(a), -1)
    traj["language_instruction"] = np.array(
        ["".join(chr(c) for c in row).split("\x00")[0] for row in codes.tolist()], dtype=object)
    return traj


def stanford_hydra(traj):
    a = traj["action"]
    traj["action"] = _cat(a[:, :6], invert_gripper_actions(a[:, -1:]))
    state = traj["observation"]["state"]
    traj["observation"]["eef_state"] = _cat(state[:, :3], state[:, 7:10])
    traj["observation"]["gripper_state"] = state[:, -3:-2]
    return traj


def austin_buds(traj):
    traj["observation"]["state"] = traj["observation"]["state"][:, :8]
    return _clip_invert_last(traj)


utaustin_mutex = austin_buds
austin_sailor = austin_sirius = _clip_invert_last


def nyu_franka_play(traj):
    traj["observation"]["eef_state"] = traj["observation"]["state"][:, -6:]
    a = traj["action"]
    traj["action"] = _cat(a[:, -8:-2], np.clip(a[:, -2:-1], 0, 1))
    return traj


def furniture_bench(traj):
    state = traj["observation"]["state"]
    traj["observation"]["state"] = _cat(state[:, :7], state[:, -1:])
    a = traj["action"]
    traj["action"] = _cat(a[:, :3], euler_from_quaternion(a[:, 3:7]),
                          invert_gripper_actions(np.clip(a[:, -1:], 0, 1)))
    return traj


def ucsd_kitchen(traj):
    traj["observation"]["joint_state"] = traj["observation"]["state"][:, :7]
    return drop_last_action_dim(traj)


def drop_last_action_dim(traj):
    traj["action"] = np.asarray(traj["action"])[..., :-1]
    return traj


def dlr_edan(traj):
    a = traj["action"]
    traj["action"] = _cat(a[:, :6], invert_gripper_actions(a[:, -1:]))
    return traj


def iamlab_pick_insert(traj):
    traj = _eef_gripper_from_state(traj, slice(0, 7), slice(7, 8), ("joint_state", "gripper_state"))
    a = traj["action"]
    traj["action"] = _cat(a[:, :3], euler_from_quaternion(a[:, 3:7]), a[:, 7:8])
    return traj


def berkeley_fanuc_manipulation(traj):
    traj = _eef_gripper_from_state(traj, slice(0, 6), slice(6, 7), ("joint_state", "gripper_state"))
    traj["action"] = _cat(traj["action"], invert_gripper_actions(traj["observation"]["gripper_state"]))
    return traj


def cmu_stretch(traj):
    state = traj["observation"]["state"]
    traj["observation"]["eef_state"] = _cat(state[:, :3], np.zeros_like(state[:, :3]))
    traj["observation"]["gripper_state"] = state[:, -1:]
    return drop_last_action_dim(traj)


def maniskill(traj):
    traj["observation"]["gripper_state"] = traj["observation"]["state"][..., 7:8]
    return traj


def kaist_nonprehensile(traj):
    traj["observation"]["state"] = traj["observation"]["state"][:, -7:]
    a = traj["action"]
    traj["action"] = _cat(a[:, :6], np.zeros((len(a), 1), np.float32))
    return traj


def robocook(traj):
    return _eef_gripper_from_state(traj)


def playfusion(traj):
    a = traj["action"]
    traj["action"] = _cat(a[:, :3], a[:, -4:])
    return traj


def bc_z(traj):
    a = traj["action"]
    traj["action"] = _cat(a["future/xyz_residual"][:, :3], a["future/axis_angle_residual"][:, :3],
                          invert_gripper_actions(_col(a["future/target_close"])[:, :1]))
    return _language_from_observation(traj)


def fmb(traj):
    obs = traj["observation"]
    obs["proprio"] = _cat(obs["eef_pose"], obs["state_gripper_pose"])
    return traj


def dobbe(traj):
    traj["observation"]["proprio"] = traj["observation"]["state"]
    return traj


def metaworld_expert(traj):
    """dreamjax's Meta-World expert data (``dreamjax.eval.collect``; no reference counterpart).

    Meta-World actions are 4-d: (Δx, Δy, Δz, g) in [−1, 1] with g = +1 closing the gripper. They become the
    7-d EEF_POS layout every OXE dataset uses — Δxyz, zero Δroll-pitch-yaw, gripper +1 open / 0 closed
    (``(1 − g) / 2``) — so the standard EEF_POS normalization mask applies (Δxyz normalized, the constant-zero
    rotation normalized to 0, the gripper left raw). :func:`metaworld_action_from_eef_pos` maps a predicted
    7-d action back to Meta-World's 4-d one. ``observation/state`` (hand xyz + gripper opening) is the proprio.
    """
    a = np.asarray(traj["action"], np.float32)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"metaworld_expert: steps/action has shape {a.shape}; expected [T, 4] (dx, dy, dz, gripper)")
    gripper_open = (1.0 - np.clip(a[:, 3:4], -1.0, 1.0)) / 2.0
    traj["action"] = _cat(a[:, :3], np.zeros((len(a), 3), np.float32), gripper_open)
    return traj


def metaworld_action_from_eef_pos(actions: np.ndarray) -> np.ndarray:
    """Inverse of :func:`metaworld_expert` on actions: [..., 7] EEF_POS (gripper +1 open / 0 closed) → [..., 4]
    Meta-World (Δx, Δy, Δz, g ∈ [−1, 1], +1 = close); the rotation entries are dropped."""
    actions = np.asarray(actions, np.float32)
    if actions.shape[-1] != 7:
        raise ValueError(f"expected 7-d EEF_POS actions, got shape {actions.shape}")
    g = 1.0 - 2.0 * actions[..., 6:7]
    return np.concatenate([actions[..., :3], np.clip(g, -1.0, 1.0)], axis=-1)


STANDARDIZATION_TRANSFORMS: dict[str, Callable[[dict], dict]] = {
    "libero": libero, "bridge_orig": bridge_orig, "bridge_oxe": bridge_oxe, "rt1": rt1, "kuka": kuka,
    "taco_play": taco_play, "jaco_play": jaco_play, "berkeley_cable_routing": berkeley_cable_routing,
    "roboturk": roboturk, "viola": viola, "berkeley_autolab_ur5": berkeley_autolab_ur5, "toto": toto,
    "language_table": language_table, "stanford_hydra": stanford_hydra, "austin_buds": austin_buds,
    "nyu_franka_play": nyu_franka_play, "furniture_bench": furniture_bench, "ucsd_kitchen": ucsd_kitchen,
    "austin_sailor": austin_sailor, "austin_sirius": austin_sirius, "dlr_edan": dlr_edan,
    "iamlab_pick_insert": iamlab_pick_insert, "utaustin_mutex": utaustin_mutex,
    "berkeley_fanuc_manipulation": berkeley_fanuc_manipulation, "cmu_stretch": cmu_stretch,
    "maniskill": maniskill, "drop_last_action_dim": drop_last_action_dim,
    "kaist_nonprehensile": kaist_nonprehensile, "robocook": robocook, "playfusion": playfusion,
    "bc_z": bc_z, "fmb": fmb, "dobbe": dobbe, "metaworld_expert": metaworld_expert,
}
