"""The embedded default, ``dreamjax demo``: Meta-World expert episodes → RLDS → tiny Dream-VLA trained by the
training loop → closed-loop evaluation → report folder. The ``--quick`` path runs end to end here (about a
minute and a half on 2 loaded cores); the learning itself is measured by the full run (numbers in the README).
"""

import importlib.util
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from dreamjax import cli

requires_metaworld = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                                        reason="Meta-World not installed: pip install 'dreamjax[metaworld]'")


def test_metaworld_actions_become_7d_eef_pos_and_back():
    from dreamjax.data.oxe.configs import get_dataset_config
    from dreamjax.data.oxe.transforms import STANDARDIZATION_TRANSFORMS, metaworld_action_from_eef_pos

    # Meta-World: (dx, dy, dz, g) with g = +1 closing; OXE EEF_POS: dxyz, drpy, gripper +1 open / 0 closed
    raw = np.array([[0.1, -0.2, 0.3, 1.0], [-0.5, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    config = get_dataset_config("metaworld_expert")
    traj = STANDARDIZATION_TRANSFORMS[config.standardize]({"action": raw.copy()})
    expected = np.array([[0.1, -0.2, 0.3, 0, 0, 0, 0.0], [-0.5, 0.0, 1.0, 0, 0, 0, 1.0],
                         [0.0, 0.0, 0.0, 0, 0, 0, 0.5]], np.float32)
    np.testing.assert_allclose(traj["action"], expected, atol=1e-7)
    assert config.action_normalization_mask == (True,) * 6 + (False,)  # gripper stays raw, as every EEF_POS set
    np.testing.assert_allclose(metaworld_action_from_eef_pos(expected), raw, atol=1e-7)
    with pytest.raises(ValueError, match="metaworld_expert.*expected \\[T, 4\\]"):
        STANDARDIZATION_TRANSFORMS["metaworld_expert"]({"action": np.zeros((3, 7), np.float32)})


def test_demo_refuses_foreign_folders_and_impossible_splits(tmp_path):
    from dreamjax.demo import DemoSettings, prepare_out

    (tmp_path / "precious.txt").write_text("not a demo")
    with pytest.raises(FileExistsError, match="not a dreamjax demo folder"):
        prepare_out(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "not a demo"
    with pytest.raises(ValueError, match="50 placements"):
        DemoSettings(episodes=45, eval_episodes=51).validate()
    # the experts are recorded on MT1 seeds other than the evaluation's, 50 placements per seed
    from dreamjax.demo import EVAL_SEED, train_seeds

    assert train_seeds(DemoSettings(episodes=50)) == (1,) and train_seeds(DemoSettings(episodes=120)) == (1, 2, 3)
    assert EVAL_SEED not in train_seeds(DemoSettings(episodes=500))


def _table_rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[a-z-]+-v3", cells[0]):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
@requires_metaworld
def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    from dreamjax.data.rlds.reader import EpisodeSource, open_dataset

    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)

    # 1. RLDS on disk in the real format, readable by dreamjax's reader
    data = out / "data" / "metaworld_expert" / "1.0.0"
    assert (data / "features.json").is_file() and (data / "dataset_info.json").is_file()
    assert list(data.glob("*.tfrecord*"))
    source = EpisodeSource(open_dataset(data), "train")
    assert len(source) == summary["expert_demos"]["reach-v3"] == 3
    assert source[0]["steps"]["action"].shape[1] == 4

    # 2. the training loop ran every step and its loss is finite
    rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == summary["settings"]["steps"] == 30
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert (out / "train" / "checkpoints" / "30").is_dir()

    # 3. closed loop: one record per held-out placement (MT1 seed 0's 0 and 1; the experts recorded seed 1's)
    results = json.loads((out / "eval" / "results.json").read_text())
    assert sorted(r["init_index"] for r in results["records"]) == [0, 1]
    paths = [source[i]["episode_metadata"]["file_path"] for i in range(len(source))]
    recorded = {p.decode() if isinstance(p, bytes) else str(p) for p in paths}
    assert recorded == {f"metaworld:reach-v3:seed_1:init_{i}" for i in range(3)}, recorded
    assert all(r["error"] is None and r["steps"] > 0 for r in results["records"])

    # 4. the report: success table that parses and agrees with the records, stage times, loss PNG, rollout GIF
    report = (out / "report.md").read_text()
    table = _table_rows(report)
    successes = sum(bool(r["success"]) for r in results["records"])
    assert table["reach-v3"][:3] == ["3", "2", str(successes)]
    assert table["reach-v3"][3] == f"{round(100 * successes / 2)}%"
    for stage in ("collect", "train", "eval"):
        assert re.search(rf"\| {stage} \| \d+ \|", report), stage
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] > 100
    gif = Image.open(out / "rollout_reach-v3.gif")
    assert gif.n_frames > 1 and gif.size == (56, 56)
    assert summary["success"]["reach-v3"]["episodes"] == 2
