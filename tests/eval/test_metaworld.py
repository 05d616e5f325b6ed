"""Meta-World through the same harness: the scripted experts reach their known success rate (100% on reach
and push within 200 steps: Meta-World ships them as solutions), and a Dream-VLA-shaped policy gets upright
camera images, proprio and the instruction, with a per-episode MP4."""

import json

import numpy as np
import pytest

from dreamjax.eval.episodes import Episode, plan_episodes
from dreamjax.eval.policy import DreamVLAPolicy, MetaWorldExpertPolicy
from dreamjax.eval.rollout import RolloutSettings, evaluate
from tests.eval.conftest import requires_metaworld, requires_mp4


@requires_metaworld
def test_scripted_experts_reach_their_known_success_rate(tmp_path):
    from dreamjax.eval.metaworld_sim import MetaWorldSim

    sim = MetaWorldSim(["reach-v3", "push-v3"], render=False, max_steps=200)
    plan = plan_episodes("metaworld", sim.task_names(), 5, num_init_states=sim.num_init_states())
    summary = evaluate(sim, MetaWorldExpertPolicy(), plan, tmp_path,
                       settings=RolloutSettings(open_loop_steps=1, video="none"))
    assert [(t["task_name"], t["successes"], t["episodes"]) for t in summary["tasks"]] == [
        ("reach-v3", 5, 5), ("push-v3", 5, 5)]
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    assert all(r["error"] is None and 10 < r["steps"] < 200 for r in records)
    # placements differ between initial states and repeat for the same one
    a, b = MetaWorldSim(["push-v3"], render=False), MetaWorldSim(["push-v3"], render=False)
    s0, s1, s0_again = (x.reset(e)["state"] for x, e in ((a, plan[5]), (a, plan[6]), (b, plan[5])))
    assert not np.allclose(s0, s1) and np.array_equal(s0, s0_again)
    a.close(), b.close()


@requires_metaworld
def test_reach_expert_steering_the_tcp_heads_for_the_centre_of_the_success_sphere():
    """Meta-World's reach expert parks the hand on the goal, leaving the TCP (where success is measured) about
    4.5 cm away, on the rim of the 5 cm sphere; with ``tcp_tasks`` the same expert steers the TCP onto it."""
    from dreamjax.eval.metaworld_sim import MetaWorldSim

    sim = MetaWorldSim(["reach-v3"], render=False)
    settled = {}
    for name, policy in (("hand", MetaWorldExpertPolicy()), ("tcp", MetaWorldExpertPolicy(tcp_tasks=["reach-v3"]))):
        dists = []
        for init in (0, 1, 2):
            episode = Episode("metaworld", 0, "reach-v3", init, 0)
            obs = sim.reset(episode)
            policy.reset(episode)
            hand_to_tcp = obs["state"][:3] - obs["tcp"]
            assert 0.04 < hand_to_tcp[2] < 0.05 and np.abs(hand_to_tcp[:2]).max() < 0.005
            successes = 0
            for _ in range(120):  # past success: where does the expert settle?
                obs, success = sim.step(policy.act(obs)[0])
                successes += success
            assert successes > 0
            dists.append(np.linalg.norm(obs["tcp"] - sim._env._target_pos))
        settled[name] = max(dists)
    sim.close()
    assert 0.035 < settled["hand"] < 0.05 and settled["tcp"] < 0.015, settled
    policy = MetaWorldExpertPolicy(tcp_tasks=["reach-v3"])
    policy.reset(Episode("metaworld", 0, "reach-v3", 0, 0))
    with pytest.raises(KeyError, match="no 'tcp'"):
        policy.act({"state": np.zeros(39)})


class FakeVLA:
    """Stands in for dreamjax.DreamVLA: records predict_action's inputs, returns a zero chunk."""

    def __init__(self, chunk=8, dim=4):
        self.calls, self.chunk, self.dim = [], chunk, dim

    def predict_action(self, images, instruction, proprio=None, unnorm_key=None, rng=None):
        self.calls.append(dict(images=np.asarray(images), instruction=instruction, proprio=proprio,
                               unnorm_key=unnorm_key, rng=rng))
        return np.zeros((self.chunk, self.dim), np.float32)


@requires_metaworld
@requires_mp4
def test_vla_policy_sees_camera_proprio_instruction_and_gets_a_video(tmp_path):
    import imageio.v2 as imageio

    from dreamjax.eval.metaworld_sim import MetaWorldSim

    model = FakeVLA()
    sim = MetaWorldSim(["reach-v3"], image_size=64, max_steps=10, fast_render=True)
    plan = plan_episodes("metaworld", sim.task_names(), 1)
    evaluate(sim, DreamVLAPolicy(model, unnorm_key="metaworld"), plan, tmp_path,
             settings=RolloutSettings(open_loop_steps=8, video="mp4"))
    assert len(model.calls) == 2  # 10 steps, chunks of 8
    c = model.calls[0]
    assert c["images"].shape == (1, 64, 64, 3) and c["images"].dtype == np.uint8
    assert c["instruction"] == "reach the red goal position" and c["unnorm_key"] == "metaworld"
    assert c["proprio"].shape == (4,)
    img = c["images"][0].astype(float)
    assert img[:8].std() < 5 < img[-8:].std()  # upright: plain background above, floor and table below
    record = json.loads((tmp_path / "results.json").read_text())["records"][0]
    frames = [f for f in imageio.get_reader(str(tmp_path / record["video"]), format="FFMPEG").iter_data()]
    assert len(frames) == record["steps"] == 10 and frames[0].shape == (64, 64, 3)


@requires_metaworld
def test_unknown_task_is_named():
    from dreamjax.eval.metaworld_sim import MetaWorldSim

    with pytest.raises(ValueError, match="reach-v9"):
        MetaWorldSim(["reach-v9"])
    sim = MetaWorldSim(["reach-v3"], image_size=32, camera=("corner3", "cornerX"))
    with pytest.raises(ValueError, match=r"unknown Meta-World camera\(s\) \['cornerX'\].*corner3"):
        sim.reset(Episode("metaworld", 0, "reach-v3", 0, 0))


@requires_metaworld
def test_a_real_tiny_dream_vla_drives_meta_world(tmp_path):
    """DreamVLAPolicy against the real DreamVLA.predict_action (tiny random model, 1 camera, 4-d actions)."""
    from dreamjax.eval.metaworld_sim import MetaWorldSim
    from dreamjax.vla.policy import DreamVLA
    from dreamjax.vla.task import objective_settings
    from tests.vla import numpy_params, synthetic_tokenizer, tiny_model

    cfg, module = tiny_model("flow", action_dim=4, proprio_dim=4, num_images=1)
    model = DreamVLA(module.config, module.head, numpy_params(module), synthetic_tokenizer(),
                     settings=objective_settings(cfg), num_images=1, image_size=28)
    sim = MetaWorldSim(["reach-v3"], image_size=32, max_steps=6, fast_render=True)
    summary = evaluate(sim, DreamVLAPolicy(model), plan_episodes("metaworld", ["reach-v3"], 1), tmp_path,
                       settings=RolloutSettings(open_loop_steps=4, video="none"))
    record = json.loads((tmp_path / "results.json").read_text())["records"][0]
    assert record["error"] is None and record["steps"] == 6 and record["queries"] == 2
    assert summary["overall"]["episodes"] == 1


@requires_metaworld
def test_cli_expert_tcp_tasks_and_blank_padded_task_lists(tmp_path, caplog):
    """`eval metaworld --policy expert` evaluates the expert as `eval collect --expert-tcp-tasks` recorded it;
    task lists may carry blanks (`"reach-v3, push-v3"`); a TCP task outside --tasks, or one given to a
    checkpoint policy, or a task list naming no task, is refused with a message naming it, before anything runs."""
    from dreamjax import cli

    out = tmp_path / "tcp"
    args = ["eval", "metaworld", "--policy", "expert", "--tasks", " reach-v3 ,", "--expert-tcp-tasks", "reach-v3",
            "--trials", "2", "--video", "none", "--out", str(out)]
    assert cli.main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["settings"]["tasks"] == ["reach-v3"] and doc["settings"]["expert_tcp_tasks"] == ["reach-v3"]
    assert doc["summary"]["overall"]["successes"] == 2

    bad = [("--tasks", " , ", "--trials", "1", "no tasks selected"),
           ("--tasks", "reach-v3", "--expert-tcp-tasks", "reach-v3, push-v3", "push-v3 not among --tasks reach-v3"),
           ("--policy", str(tmp_path / "ckpt"), "--expert-tcp-tasks", "reach-v3", "no meaning with --policy")]
    for flag_a, value_a, flag_b, value_b, message in bad:
        caplog.clear()
        argv = ["eval", "metaworld", "--policy", "expert", "--tasks", "reach-v3", "--video", "none",
                "--out", str(tmp_path / "bad"), flag_a, value_a, flag_b, value_b]
        assert cli.main(argv) == 2
        assert message in caplog.text
        assert not (tmp_path / "bad").exists()


@requires_metaworld
def test_cli_independent_processes_then_merge(tmp_path):
    from dreamjax import cli

    common = ["eval", "metaworld", "--policy", "expert", "--tasks", "reach-v3", "--trials", "3", "--video", "none",
              "--out", str(tmp_path)]
    for i in range(2):
        assert cli.main(common + ["--process-index", str(i), "--process-count", "2"]) == 0
    assert not (tmp_path / "results.json").exists()
    assert cli.main(["eval", "merge", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["summary"]["overall"] == dict(episodes=3, successes=3, success_rate=1.0, missing=0)
    assert doc["settings"]["policy"] == "expert"
    assert cli.main(["eval", "merge", str(tmp_path / "nope")]) == 2  # a clear error, not a traceback
