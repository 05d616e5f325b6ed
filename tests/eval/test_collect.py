"""Scripted Meta-World experts → an RLDS dataset written by dreamjax's writer and read back by its reader:
one record per successful episode, observations before each action, flags, instruction, metadata."""

import io

import numpy as np
from PIL import Image

from tests.eval.conftest import requires_metaworld


@requires_metaworld
def test_expert_episodes_round_trip_through_rlds(tmp_path):
    from dreamjax.data.rlds.reader import EpisodeSource, open_dataset
    from dreamjax.eval.collect import collect_expert_dataset
    from dreamjax.eval.metaworld_sim import MetaWorldSim

    path, stats = collect_expert_dataset(["reach-v3"], 2, tmp_path, image_size=32, first_init=3,
                                         fast_render=True)
    assert stats == {"reach-v3": dict(episodes=2, successes=2, steps=stats["reach-v3"]["steps"])}
    source = EpisodeSource(open_dataset(path), "train")
    assert len(source) == 2
    ep = source[1]
    steps = ep["steps"]
    n = len(steps["action"])
    assert sum(len(source[i]["steps"]["action"]) for i in range(2)) == stats["reach-v3"]["steps"]
    assert steps["action"].shape == (n, 4) and steps["observation"]["state"].shape == (n, 4)
    assert list(steps["is_first"]) == [True] + [False] * (n - 1) and bool(steps["is_last"][-1])
    assert steps["reward"][-1] == 1.0 and steps["reward"][:-1].sum() == 0 and bool(steps["is_terminal"][-1])
    assert steps["language_instruction"][0] == b"reach the red goal position"
    assert ep["episode_metadata"]["init_index"] == 4 and ep["episode_metadata"]["task"] == b"reach-v3"

    # the stored step 0 is the observation of a fresh reset of the same placement
    sim = MetaWorldSim(["reach-v3"], image_size=32, fast_render=True)
    from dreamjax.eval.episodes import Episode

    obs = sim.reset(Episode("metaworld", 0, "reach-v3", 4, 7))
    np.testing.assert_allclose(steps["observation"]["state"][0], obs["proprio"], rtol=1e-6)
    image = np.asarray(Image.open(io.BytesIO(steps["observation"]["image"][0])))
    assert image.shape == (32, 32, 3) and np.abs(image.astype(int) - obs["images"][0]).mean() < 8  # JPEG
    sim.close()


@requires_metaworld
def test_two_cameras_are_recorded_in_order_and_previewed(tmp_path, capsys):
    """Two views (the demo's corner3 + corner) become image / image2, the metaworld_expert config's primary /
    secondary cameras; `dreamjax data preview` shows both, and only the first for a one-camera recording."""
    import json

    from dreamjax.cli import main
    from dreamjax.data.oxe.configs import get_dataset_config
    from dreamjax.data.rlds.reader import EpisodeSource, open_dataset
    from dreamjax.data.traj_transforms import standardize_episode
    from dreamjax.eval.collect import collect_expert_dataset
    from dreamjax.eval.episodes import Episode
    from dreamjax.eval.metaworld_sim import MetaWorldSim

    two, one = tmp_path / "two", tmp_path / "one"
    path, _ = collect_expert_dataset(["reach-v3"], 1, two, image_size=32, camera=("corner3", "corner"),
                                     fast_render=True, max_steps=60, only_successful=False)
    features = json.loads((path / "features.json").read_text())
    assert "corner3" in json.dumps(features) and "corner" in json.dumps(features)
    episode = EpisodeSource(open_dataset(path), "train")[0]
    sim = MetaWorldSim(["reach-v3"], image_size=32, camera=("corner3", "corner"), fast_render=True)
    obs = sim.reset(Episode("metaworld", 0, "reach-v3", 0, 0))
    sim.close()
    assert obs["images"].shape == (2, 32, 32, 3)
    assert np.abs(obs["images"][0].astype(int) - obs["images"][1]).mean() > 20  # two different views
    traj = standardize_episode(episode, get_dataset_config("metaworld_expert"), ("primary", "secondary"), "mw")
    for view, cam in (("primary", 0), ("secondary", 1)):
        stored = np.asarray(Image.open(io.BytesIO(traj.images[view][0])))
        assert np.abs(stored.astype(int) - obs["images"][cam]).mean() < 8  # JPEG

    collect_expert_dataset(["reach-v3"], 1, one, image_size=32, fast_render=True, max_steps=60,
                           only_successful=False)
    heights = {}
    for root in (two, one):
        capsys.readouterr()
        assert main(["data", "preview", "--data-dir", str(root), "--dataset", "metaworld_expert", "--episodes", "1",
                     "--frames", "2", "--out", str(root / "preview")]) == 0
        heights[root.name] = Image.open(json.loads(capsys.readouterr().out)[0]).height
    assert heights["two"] > heights["one"] > 0
