"""Offline action metrics on held-out RLDS episodes (LIBERO schema fixture, tiny random Dream-VLA): batched,
bucketed prediction over the pipeline's frames gives the same L1 / token accuracy as predicting each frame
alone with DreamVLA.predict_action and averaging in numpy."""

import json

import numpy as np
import pytest

from dreamjax.data.rlds import schemas, write_rlds_dataset
from tests.data.rlds.fixtures import libero_episode


@pytest.fixture(scope="module")
def libero_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlds")
    rng = np.random.default_rng(0)
    episodes = [libero_episode(rng, 5 + i, instruction=ins, size=32)
                for i, ins in enumerate(["Put the bowl on the plate", "open the top drawer of the cabinet", "stop"])]
    write_rlds_dataset(root, "libero_10_no_noops", "1.0.0", schemas.libero_features(32), episodes)  # stored 32 px, policy 28
    return root


def test_offline_metrics_match_per_frame_predictions(libero_dir, tmp_path):
    from dreamjax.data.vla_pipeline import vla_pipeline
    from dreamjax.eval.offline import _data_config, offline_metrics
    from dreamjax.vla.policy import DreamVLA
    from dreamjax.vla.task import objective_settings
    from tests.vla import numpy_params, synthetic_tokenizer, tiny_model

    cfg, module = tiny_model("l1", action_dim=7, proprio_dim=8, chunk=4, num_images=2)
    policy = DreamVLA(module.config, module.head, numpy_params(module), synthetic_tokenizer(),
                      settings=objective_settings(cfg), num_images=2, image_size=28)
    # a training data section: its on-device augmentation / resize must not reach the offline metrics
    data = dict(data_dir=str(libero_dir), mixture="libero_10_no_noops", split="train", augment="device",
                resize="device")
    summary = offline_metrics(policy, data, tmp_path, batch_size=4)

    frames = list(vla_pipeline(_data_config(policy, data), process_index=0, process_count=1).dataset)
    assert summary["frames"] == len(frames) == 2 + 3 + 4  # frames with a full chunk of 4 ahead
    preds = np.stack([policy.predict_action(f["images"], f["instruction"], proprio=f["proprio"],
                                            return_normalized=True) for f in frames])
    targets = np.stack([f["actions"] for f in frames]).astype(np.float64)
    err = np.abs(preds - targets)
    np.testing.assert_allclose(summary["l1"], err.mean(), rtol=1e-5)
    np.testing.assert_allclose(summary["l1_current"], err[:, 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(summary["l1_per_dim"], err.mean((0, 1)), rtol=1e-5)
    bins = np.linspace(-1, 1, 256)
    same_bin = np.digitize(np.clip(preds, -1, 1), bins) == np.digitize(np.clip(targets, -1, 1), bins)
    assert summary["token_accuracy"] == pytest.approx(same_bin.mean(), abs=1.5 / same_bin.size)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["summary"]["frames"] == 9 and "| 9 |" in (tmp_path / "results.md").read_text()
