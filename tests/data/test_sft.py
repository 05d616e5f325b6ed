"""LLaVA-style SFT JSON → fixed-shape batches (dreamjax.data.sft) and the shapes task writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dreamjax.data import sft
from dreamjax.data.shapes_task import task_texts, write_shapes_dataset
from dreamjax.data.tokenizer_spm import train_sentencepiece
from dreamjax.diffusion.objective import IGNORE_INDEX

S = 40


@pytest.fixture(scope="module")
def tok():
    return train_sentencepiece(task_texts() + ["Describe it.", "a red square"], vocab_size=400)


def _write(tmp_path, records, images=("a.png",)):
    for name in images:
        Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def _records():
    return [
        {"image": "a.png", "conversations": [{"from": "human", "value": "What colour are the shapes?\n<image>"},
                                             {"from": "gpt", "value": "red"}]},
        {"conversations": [{"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "a red square"}]},
    ]


def _batch(path, tok, **layout):
    lay = sft.SFTLayout(canvas_length=S, **layout)
    return next(iter(sft.sft_dataset(path, tok, lay, batch_size=2, shuffle=False)))


def test_batch_shapes_padding_and_labels(tmp_path, tok):
    b = _batch(_write(tmp_path, _records()), tok)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (2, S)
    assert b["pixel_values"].shape == (2, 16, 1176) and b["patch_positions"].shape == (2, 16, 2)
    assert b["patch_segment_ids"].shape == (2, 16)
    # image sample: 56x56 → grid (1, 4, 4) → 4 pads, moved to the start of the user turn followed by "\n"
    text0 = tok.decode(b["input_ids"][0][:b["lengths"][0]])
    assert "<|im_start|>user\n" + "<|image_pad|>" * 4 + "\nWhat colour are the shapes?<|im_end|>" in text0
    assert text0.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert text0.endswith("<|im_start|>assistant\nred<|im_end|>\n")
    # text-only sample: no image rows used
    assert (b["patch_segment_ids"][1] == 0).all() and (b["pixel_values"][1] == 0).all()
    assert (b["patch_segment_ids"][0] == 1).all()
    for row in range(2):
        n = b["lengths"][row]
        ids, labels = b["input_ids"][row], b["labels"][row]
        # canvas EOS policy: every position after the sample is an attended <|endoftext|> target
        assert (ids[n:] == tok.pad_id).all() and (labels[n:] == tok.pad_id).all()
        assert (b["attention_mask"][row] == 1).all()
        # the assistant turn (from its <|im_start|>) is fully maskable; image pads never
        start = max(i for i in range(n) if ids[i] == tok.im_start_id)
        np.testing.assert_array_equal(labels[start:n], ids[start:n])
        assert (labels[ids == tok.image_pad_id] == IGNORE_INDEX).all()
        # prompt text is not maskable, structural tokens are
        prompt = np.arange(start)
        structural = np.isin(ids[prompt], [tok.newline_id, tok.im_start_id, tok.im_end_id])
        assert (labels[prompt][structural] == ids[prompt][structural]).all()
        assert (labels[prompt][~structural] == IGNORE_INDEX).all()


def test_eos_policies(tmp_path, tok):
    path = _write(tmp_path, _records())
    b = _batch(path, tok, eos_targets="none")
    n = b["lengths"]
    assert (b["labels"][0][n[0]:] == IGNORE_INDEX).all() and (b["attention_mask"][0][n[0]:] == 0).all()
    b = _batch(path, tok, eos_targets="batch")  # reference collator: EOS targets up to the longest sample
    longest = int(n.max())
    for row in range(2):
        assert (b["labels"][row][n[row]:longest] == tok.pad_id).all()
        assert (b["labels"][row][longest:] == IGNORE_INDEX).all()
        assert (b["attention_mask"][row][:longest] == 1).all() and (b["attention_mask"][row][longest:] == 0).all()


def test_deterministic_and_reshuffled_per_epoch(tmp_path, tok):
    path = write_shapes_dataset(tmp_path / "shapes", 12, seed=3)
    assert write_shapes_dataset(tmp_path / "again", 12, seed=3).read_text() == path.read_text()
    lay = sft.SFTLayout(canvas_length=S)

    def run(seed):
        ds = sft.sft_dataset(path, tok, lay, batch_size=4, seed=seed, num_epochs=2)
        return [b["input_ids"] for b in ds]

    a, b, c = run(0), run(0), run(1)
    assert len(a) == 6
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))
    assert not all((x == y).all() for x, y in zip(a[:3], a[3:]))  # epoch 2 is reshuffled


def test_bad_inputs_name_the_sample(tmp_path, tok):
    lay = sft.SFTLayout(canvas_length=S)
    recs = _records()
    recs[1] = {"image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                         {"from": "gpt", "value": "red"}]}
    with pytest.raises(sft.SampleError, match=r"sample 1: .*missing.png"):
        list(sft.sft_dataset(_write(tmp_path, recs), tok, lay, batch_size=1, shuffle=False))

    recs = _records()
    recs[1]["image"] = "a.png"  # an image but no <image> placeholder
    with pytest.raises(sft.SampleError, match=r"sample 1: 0 <image> placeholder\(s\) .* 1 image"):
        list(sft.sft_dataset(_write(tmp_path, recs), tok, lay, batch_size=1, shuffle=False))

    recs = _records()
    recs[0]["conversations"][1]["value"] = "red " * 30
    path = _write(tmp_path, recs)
    with pytest.raises(sft.SampleError, match=r"sample 0: too long: \d+ tokens > canvas_length 40"):
        list(sft.sft_dataset(path, tok, lay, batch_size=1, shuffle=False))
    # asked to skip: the over-long sample is dropped (and counted), the rest still batches
    skip = sft.SFTLayout(canvas_length=S, on_too_long="skip")
    before = sft.skipped_in_this_process()
    batches = list(sft.sft_dataset(path, tok, skip, batch_size=1, shuffle=False))
    assert len(batches) == 1 and sft.skipped_in_this_process() == before + 1

    recs = _records()
    recs[0]["conversations"][0]["from"] = "robot"
    with pytest.raises(sft.SampleError, match=r"sample 0 turn 0: unknown role 'robot'"):
        list(sft.sft_dataset(_write(tmp_path, recs), tok, lay, batch_size=1, shuffle=False))


def test_image_budget_exceeded_is_an_error(tmp_path, tok):
    recs = _records()
    Image.new("RGB", (112, 112), (0, 0, 200)).save(tmp_path / "big.png")
    recs[0]["image"] = "big.png"  # 112x112 → 64 patches > one row of 16
    path = _write(tmp_path, recs)
    lay = sft.SFTLayout(canvas_length=64, row_len=16, max_pixels=112 * 112)
    with pytest.raises(sft.SampleError, match="sample 0: too long: image budget exceeded"):
        list(sft.sft_dataset(path, tok, lay, batch_size=1, shuffle=False))


def test_prompt_matches_training_prefix(tmp_path, tok):
    path = write_shapes_dataset(tmp_path, 4, seed=0)
    rec = sft.load_records(path)[0]
    lay = sft.SFTLayout(canvas_length=S)
    prompt = sft.encode_prompt(rec, tok, lay)
    sample = sft.EncodeSample(tok, lay).map(rec)
    p = len(prompt["input_ids"])
    np.testing.assert_array_equal(sample["input_ids"][:p], prompt["input_ids"])
    assert prompt["image_grid_thw"].tolist() == [[1, 4, 4]] and prompt["pixel_values"].shape == (16, 1176)
