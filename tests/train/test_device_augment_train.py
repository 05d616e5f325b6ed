"""``dreamjax train`` with ``data.augment="device"`` / ``data.resize="device"`` on a tiny RLDS fixture: the
augmentation (and resize) runs inside the jitted train step, before the model, on the batch sharded over the
8 test devices; the model receives exactly what ``device_augment`` makes of the batch the loop fed; a resumed
run's data iterator feeds the same samples and seeds; ``--compile-only`` lowers the same step from the config's batch shapes.

Observation: a spy around ``dreamjax.vla.task.vla_loss`` (what the task's loss calls after building the
model's inputs) hands the ``pixel_values`` the model reads to the host with ``jax.debug.callback``; a spy
around ``dreamjax.train.data.global_batch`` keeps the host batches the loop fed to the step.
"""

import json

import jax
import numpy as np
import pytest

from dreamjax.config_loader import load_config
from dreamjax.data import device_augment as da
from dreamjax.train import data as data_lib
from dreamjax.train import aot
from dreamjax.vla import synthetic
from dreamjax.vla import task as vla_task
from tests.data.rlds.fixtures import write_fixture

GREY_LEVEL = 1 / 255 / 0.26130258  # one uint8 step after CLIP normalization (the smallest channel std)


@pytest.fixture(scope="module")
def rlds_env(tmp_path_factory):
    """A 4-episode LIBERO-schema RLDS dataset (2 cameras stored at 24², instructions the synthetic task's
    tokenizer knows), that tokenizer, and a private statistics cache."""
    root = tmp_path_factory.mktemp("device_aug_train")
    write_fixture(root / "data", "libero_10_no_noops", [8, 9, 10, 8], seed=3, size=24,
                  instructions=list(synthetic.INSTRUCTIONS))
    synthetic.tokenizer().save(root / "tokenizer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DREAMJAX_CACHE", str(root / "cache"))
        yield root


def vla_cfg(root, *, augment, resize, steps=3, **train):
    """dream_vla_tiny (28-px images: a 2×2 patch grid per camera) on the LIBERO fixture, batch 8 over 8 devices."""
    cfg = load_config("dream_vla_tiny", [f"--config.train.steps={steps}", "--config.train.batch_size=8",
                                         "--config.train.log_every=1"])
    cfg.vla.action_dim, cfg.vla.proprio_dim, cfg.vla.chunk = 7, 8, 2
    cfg.train.update(async_checkpoint=False, compiler_options={"xla_backend_optimization_level": 0}, **train)
    cfg.data = dict(kind="rlds", data_dir=str(root / "data"), tokenizer=str(root / "tokenizer"),
                    mixture="libero_10_no_noops", augment=augment, resize=resize, shuffle_buffer=16, seed=0)
    return cfg


def train_and_watch(cfg, workdir, resume=False):
    """Run the real loop; returns (host batches fed to the step, pixel_values the model received) per step."""
    from dreamjax.train.loop import train

    fed, seen = [], []
    real_loss, real_global_batch = vla_task.vla_loss, data_lib.global_batch

    def loss_spy(module, settings, variables, batch, rng):
        # keep the array; converting it inside the callback would block a device thread mid-collective
        jax.debug.callback(seen.append, batch["pixel_values"])
        return real_loss(module, settings, variables, batch, rng)

    def global_batch_spy(local, keys, shardings, process_count):
        fed.append({k: np.array(local[k]) for k in keys})
        out = real_global_batch(local, keys, shardings, process_count)
        for k in keys:  # every key, the data-only ones included, is split over the 8 devices on its batch axis
            assert len(out[k].addressable_shards) == 8 and out[k].addressable_shards[0].data.shape[0] == \
                out[k].shape[0] // 8, k
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vla_task, "vla_loss", loss_spy)
        mp.setattr(data_lib, "global_batch", global_batch_spy)
        summary = train(cfg, workdir, resume=resume)
    jax.effects_barrier()
    return summary, fed, [np.asarray(x) for x in seen]


def assert_within_one_grey_level(got, want):
    """Same values up to float rounding; a pixel may land one uint8 level apart (the device augmentation's
    floor(x·255.5) after a differently fused float computation), on < 1e-3 of the values."""
    diff = np.abs(got - want)
    assert diff.max() <= GREY_LEVEL + 1e-5
    assert (diff > 1e-5).mean() < 1e-3


@pytest.fixture(scope="module")
def augmented_run(rlds_env, tmp_path_factory):
    work = tmp_path_factory.mktemp("augmented_run")
    cfg = vla_cfg(rlds_env, augment="device", resize="host", steps=4, save_every=2, keep=3)
    summary, fed, seen = train_and_watch(cfg, work)
    return cfg, work, summary, fed, seen


def test_the_model_trains_on_the_batch_augmented_in_the_step(augmented_run):
    cfg, _, summary, fed, seen = augmented_run
    assert summary["step"] == 4 and np.isfinite(summary["metrics"]["loss"])
    assert len(fed) == len(seen) == 4
    for batch, received in zip(fed, seen):
        assert batch["augment_seed"].shape == (8, 2) and batch["augment_seed"].dtype == np.uint32
        assert batch["image_mask"].shape == (8, 2) and batch["image_mask"].all()
        want = np.asarray(da.augment_pixel_values(batch["pixel_values"], batch["augment_seed"], batch["image_mask"],
                                                  grid_side=2))
        assert received.shape == batch["pixel_values"].shape == (16, 4, 1176)
        assert_within_one_grey_level(received, want)
        # ... and not the un-augmented frames the pipeline delivered
        assert np.isclose(received, batch["pixel_values"], atol=1e-5).mean() < 0.05
    seeds = np.concatenate([b["augment_seed"] for b in fed])
    assert len({tuple(s) for s in seeds}) == len(seeds)  # every sample its own augmentation


def test_the_data_iterator_restored_from_a_checkpoint_feeds_the_same_seeds(augmented_run, tmp_path):
    """The data-iterator state stored with checkpoint 2 resumes at batch 3 with the same samples and seeds
    (they come from sample identity), so a resumed run augments steps 3–4 as the uninterrupted run did."""
    cfg, work, _, fed, seen = augmented_run
    state = json.loads((work / "checkpoints" / "2" / "data" / "process_0-of-1.json").read_text())
    it, _ = data_lib.make_iterator(cfg, tmp_path, global_batch=8, local_batch=8, offset=0)
    it.set_state(state)
    for want, received in zip(fed[2:], seen[2:]):
        got = next(it)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        again = np.asarray(da.augment_pixel_values(got["pixel_values"], got["augment_seed"], got["image_mask"],
                                                   grid_side=2))
        assert_within_one_grey_level(received, again)


def test_resize_on_device_gives_the_model_the_host_resized_input(rlds_env, tmp_path):
    """resize='device' without augmentation: the step resizes the stored 24² frames to 28² itself; the model
    receives the pixel_values the host-resize pipeline would have delivered."""
    cfg = vla_cfg(rlds_env, augment="none", resize="device", steps=2)
    summary, fed, seen = train_and_watch(cfg, tmp_path / "run")
    assert summary["step"] == 2 and np.isfinite(summary["metrics"]["loss"])
    host_cfg = vla_cfg(rlds_env, augment="none", resize="host")
    it, _ = data_lib.make_iterator(host_cfg, tmp_path, global_batch=8, local_batch=8, offset=0)
    for batch, received in zip(fed, seen):
        host = next(it)
        assert "pixel_values" not in batch and batch["images"].shape == (8, 2, 24, 24, 3)  # stored size
        np.testing.assert_array_equal(batch["input_ids"], host["input_ids"])  # the same samples
        assert np.abs(received - host["pixel_values"]).max() <= GREY_LEVEL + 1e-5  # as tests/data/rlds
        assert np.isclose(received, host["pixel_values"], atol=1e-5).mean() > 0.999


def test_compile_only_lowers_the_step_with_the_device_image_keys(rlds_env, tmp_path):
    """The abstract batch of --compile-only has augment_seed, image_mask and the stored-size images: its
    lowering equals the loop's step lowered on a real batch. Without data.stored_image_size the shapes are
    unknown (named); a batch of another size than the configured one is refused when the step is traced."""
    from dreamjax.train.loop import batch_shardings, setup
    from dreamjax.train.step import make_train_step

    cfg = vla_cfg(rlds_env, augment="device", resize="device", grad_accum=2)  # micro-batches split the new keys
    cfg.mesh.update(data=4, tensor=2)
    with pytest.raises(ValueError, match=r"data\.stored_image_size"):
        aot.lower_step(cfg, jax.devices())
    cfg.data.stored_image_size = 24
    lowered, facts = aot.lower_step(cfg, jax.devices())
    assert facts["step_flops"] > 0 and facts["grad_accum"] == 2

    mesh, rules, task, plan, optimizer, schedule = setup(cfg, jax.devices())
    assert {"images", "augment_seed", "image_mask"} <= set(task.batch_keys) and "pixel_values" not in task.batch_keys
    it, _ = data_lib.make_iterator(cfg, tmp_path, global_batch=8, local_batch=8, offset=0)
    first = next(it)
    sh = batch_shardings(task, mesh, rules, {k: np.shape(first[k]) for k in task.batch_keys})
    step = make_train_step(task, optimizer, schedule, plan, mesh, rules, sh, global_batch=8, accum=2,
                           seed=int(cfg.train.seed))
    real = step.lower(plan.abstract, data_lib.global_batch(first, task.batch_keys, sh, 1))
    assert lowered.as_text() == real.as_text()

    cfg.data.stored_image_size = 32
    mesh, rules, task, plan, optimizer, schedule = setup(cfg, jax.devices())
    step = make_train_step(task, optimizer, schedule, plan, mesh, rules, sh, global_batch=8, accum=2,
                           seed=int(cfg.train.seed))
    with pytest.raises(ValueError, match=r"batch\['images'\] are 24×24 but data\.stored_image_size is 32×32"):
        step.lower(plan.abstract, data_lib.global_batch(first, task.batch_keys, sh, 1))


def test_device_images_need_the_rlds_pipeline_and_a_valid_mode():
    cfg = load_config("dream_vla_tiny")  # data.kind = synthetic_vla: no seeds, no stored images
    cfg.data.augment = "device"
    with pytest.raises(ValueError, match=r"data\.augment='device'.*data\.kind='synthetic_vla' has none"):
        vla_task.make_vla_task(cfg)
    cfg.data.update(kind="rlds", augment="host", resize="device")
    with pytest.raises(ValueError, match=r"resize='device' with data\.augment='host'"):
        vla_task.make_vla_task(cfg)
    cfg.data.update(augment="gpu", resize="host")
    with pytest.raises(ValueError, match=r"data\.augment='gpu'; expected one of"):
        vla_task.make_vla_task(cfg)
    cfg.data.update(augment="none", resize="host")  # the model's pixel_values as delivered: the plain task
    assert "augment_seed" not in vla_task.make_vla_task(cfg).batch_keys
