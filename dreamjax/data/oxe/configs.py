"""Per-dataset Open X-Embodiment configs (spec §8.2): camera keys, state keys + encoding, action encoding.

Declarative, as the reference's ``oxe/configs.py``: each entry says which observation keys (after the
dataset's standardization transform, :mod:`.transforms`) are the ``primary`` / ``secondary`` / ``wrist``
cameras, which keys are concatenated into ``proprio`` (``None`` = one zero pad dimension), and the state and
action encodings. ``rlds_names`` lists the directory names the dataset may have on disk (``bridge_orig`` is
``bridge_dataset`` on disk). Depth keys are recorded for completeness; the Dream-VLA pipeline loads RGB only.

Action normalization masks follow the encoding (spec §7): EEF_POS ``[True]*6 + [False]`` (gripper left
raw), EEF_R6 ``[True]*9 + [False]``, JOINT_POS_BIMANUAL all true; only those three encodings are loadable.
"""

from __future__ import annotations

import dataclasses
import enum


class StateEncoding(enum.IntEnum):
    NONE = -1
    POS_EULER = 1        # EEF xyz (3) + roll-pitch-yaw (3) + pad (1) + gripper (1)
    POS_QUAT = 2         # EEF xyz (3) + quaternion (4) + gripper (1)
    JOINT = 3            # joint angles (7, padded) + gripper (1)
    JOINT_BIMANUAL = 4   # 2 × (joint angles (6) + gripper (1))


class ActionEncoding(enum.IntEnum):
    EEF_POS = 1              # EEF delta xyz (3) + roll-pitch-yaw (3) + gripper (1)
    JOINT_POS = 2            # joint delta (7) + gripper (1)
    JOINT_POS_BIMANUAL = 3   # 2 × (joint delta (6) + gripper (1))
    EEF_R6 = 4               # EEF delta xyz (3) + R6 (6) + gripper (1)


ACTION_NORMALIZATION_MASKS = {
    ActionEncoding.EEF_POS: (True,) * 6 + (False,),
    ActionEncoding.EEF_R6: (True,) * 9 + (False,),
    ActionEncoding.JOINT_POS_BIMANUAL: (True,) * 14,
}


@dataclasses.dataclass(frozen=True)
class OXEDatasetConfig:
    name: str
    image_obs_keys: dict           # view ("primary", "secondary", "wrist", ...) → observation key or None
    state_obs_keys: tuple          # observation keys (None = one zero dim) concatenated into proprio
    state_encoding: StateEncoding
    action_encoding: ActionEncoding
    standardize: str               # name in transforms.STANDARDIZATION_TRANSFORMS
    depth_obs_keys: dict = dataclasses.field(default_factory=dict)
    rlds_names: tuple = ()         # on-disk directory names (default: (name,))

    @property
    def action_normalization_mask(self) -> tuple:
        if self.action_encoding not in ACTION_NORMALIZATION_MASKS:
            raise ValueError(f"dataset {self.name}: action encoding {self.action_encoding.name} is not loadable "
                             f"(the reference loads only {[e.name for e in ACTION_NORMALIZATION_MASKS]})")
        return ACTION_NORMALIZATION_MASKS[self.action_encoding]

    @property
    def directory_names(self) -> tuple:
        return self.rlds_names or (self.name,)


S, A = StateEncoding, ActionEncoding
_CONFIGS: list[OXEDatasetConfig] = []


def _add(name, primary, secondary, wrist, state, senc, aenc=A.EEF_POS, standardize=None, depth=None, rlds_names=()):
    _CONFIGS.append(OXEDatasetConfig(
        name=name, image_obs_keys={"primary": primary, "secondary": secondary, "wrist": wrist},
        state_obs_keys=tuple(state), state_encoding=senc, action_encoding=aenc, standardize=standardize or name,
        depth_obs_keys=dict(zip(("primary", "secondary", "wrist"), depth or (None, None, None))),
        rlds_names=tuple(rlds_names)))


_EEF_PAD_GRIP = ("EEF_state", None, "gripper_state")
_eef_pad_grip = ("eef_state", None, "gripper_state")
_NONE8 = (None,) * 8
X = "_converted_externally_to_rlds"

# LIBERO (openvla/modified_libero_rlds): the four suites + libero_90
for suite in ("spatial", "object", "goal", "10", "90"):
    _add(f"libero_{suite}_no_noops", "image", None, "wrist_image", ("EEF_state", "gripper_state"), S.POS_EULER,
         standardize="libero")
# Bridge V2: the project-website RLDS ("bridge_orig", on disk "bridge_dataset")
_add("bridge_orig", "image_0", "image_1", None, _EEF_PAD_GRIP, S.POS_EULER, standardize="bridge_orig",
     rlds_names=("bridge_orig", "bridge_dataset"))
_add("bridge_dataset", "image_0", "image_1", None, _EEF_PAD_GRIP, S.POS_EULER, standardize="bridge_orig")
_add("bridge_oxe", "image", "image_1", None, _EEF_PAD_GRIP, S.POS_EULER)
# oxe_magic_soup (and rtx / rtx_franka / magic_soup_plus members that need no extra libraries)
_add("fractal20220817_data", "image", None, None, ("base_pose_tool_reached", "gripper_closed"), S.POS_QUAT,
     standardize="rt1")
_add("kuka", "image", None, None, ("clip_function_input/base_pose_tool_reached", "gripper_closed"), S.POS_QUAT)
_add("taco_play", "rgb_static", None, "rgb_gripper", ("state_eef", None, "state_gripper"), S.POS_EULER,
     depth=("depth_static", None, "depth_gripper"))
_add("jaco_play", "image", None, "image_wrist", ("state_eef", None, "state_gripper"), S.POS_EULER)
_add("berkeley_cable_routing", "image", "top_image", "wrist45_image", ("robot_state", None), S.JOINT)
_add("roboturk", "front_rgb", None, None, _NONE8, S.NONE)
_add("viola", "agentview_rgb", None, "eye_in_hand_rgb", ("joint_states", "gripper_states"), S.JOINT)
_add("berkeley_autolab_ur5", "image", None, "hand_image", ("state",), S.POS_QUAT, depth=("depth", None, None))
_add("toto", "image", None, None, ("state", None), S.JOINT)
_add("language_table", "rgb", None, None, ("effector_translation",) + (None,) * 6, S.POS_EULER)
_add("stanford_hydra_dataset" + X, "image", None, "wrist_image", _eef_pad_grip, S.POS_EULER,
     standardize="stanford_hydra")
_add("austin_buds_dataset" + X, "image", None, "wrist_image", ("state",), S.JOINT, standardize="austin_buds")
_add("nyu_franka_play_dataset" + X, "image", "image_additional_view", None, ("eef_state", None, None), S.POS_EULER,
     standardize="nyu_franka_play", depth=("depth", "depth_additional_view", None))
_add("furniture_bench_dataset" + X, "image", None, "wrist_image", ("state",), S.POS_QUAT,
     standardize="furniture_bench")
_add("ucsd_kitchen_dataset" + X, "image", None, None, ("joint_state", None), S.JOINT, standardize="ucsd_kitchen")
_add("austin_sailor_dataset" + X, "image", None, "wrist_image", ("state",), S.POS_QUAT, standardize="austin_sailor")
_add("austin_sirius_dataset" + X, "image", None, "wrist_image", ("state",), S.POS_QUAT, standardize="austin_sirius")
_add("dlr_edan_shared_control" + X, "image", None, None, ("state", None), S.POS_EULER, standardize="dlr_edan")
_add("iamlab_cmu_pickup_insert" + X, "image", None, "wrist_image", ("joint_state", "gripper_state"), S.JOINT,
     standardize="iamlab_pick_insert")
_add("utaustin_mutex", "image", None, "wrist_image", ("state",), S.JOINT)
_add("berkeley_fanuc_manipulation", "image", None, "wrist_image", ("joint_state", None, "gripper_state"), S.JOINT)
_add("cmu_stretch", "image", None, None, _eef_pad_grip, S.POS_EULER)
# rtx_franka / magic_soup_plus members with simple transforms
_add("maniskill_dataset" + X, "image", None, "wrist_image", ("tcp_pose", "gripper_state"), S.POS_QUAT,
     standardize="maniskill", depth=("depth", None, "wrist_depth"))
_add("cmu_franka_exploration_dataset" + X, "highres_image", None, None, _NONE8, S.NONE,
     standardize="drop_last_action_dim")
_add("kaist_nonprehensile" + X, "image", None, None, ("state", None), S.POS_QUAT, standardize="kaist_nonprehensile")
_add("stanford_robocook" + X, "image_1", "image_2", None, _eef_pad_grip, S.POS_EULER, standardize="robocook",
     depth=("depth_1", "depth_2", None))
_add("cmu_play_fusion", "image", None, None, ("state",), S.JOINT, standardize="playfusion")
_add("bc_z", "image", None, None, ("present/xyz", "present/axis_angle", None, "present/sensed_close"), S.POS_EULER)
_add("fmb_dataset", "image_side_1", "image_side_2", "image_wrist_1", ("proprio",), S.POS_EULER, standardize="fmb",
     depth=("image_side_1_depth", "image_side_2_depth", "image_wrist_1_depth"))
_add("dobbe", "wrist_image", None, None, ("proprio",), S.POS_EULER)
# dreamjax's own Meta-World scripted-expert demonstrations (dreamjax.eval.collect, the embedded demo):
# proprio = hand xyz + gripper opening (4-d, no OXE state encoding); actions padded to 7-d EEF_POS (transforms);
# a second recorded camera (image2) is the secondary view
_add("metaworld_expert", "image", "image2", None, ("state",), S.NONE, standardize="metaworld_expert")

OXE_DATASET_CONFIGS: dict[str, OXEDatasetConfig] = {c.name: c for c in _CONFIGS}


def get_dataset_config(name: str) -> OXEDatasetConfig:
    try:
        return OXE_DATASET_CONFIGS[name]
    except KeyError:
        raise KeyError(f"no OXE dataset config named {name!r}; registered: {sorted(OXE_DATASET_CONFIGS)}") from None
