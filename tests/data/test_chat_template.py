"""dreamjax.data.chat_template: the Dream-VL chat template rendered like transformers' apply_chat_template
(on a Jinja template written here from spec §3), pad expansion counts, build_prompt, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from dreamjax.data.chat_template import build_prompt, count_media, expand_image_pads, render_chat
from dreamjax.data.tokenizer import Tokenizer, train_sentencepiece
from tests.data.qwen_tokenizer_files import make_dream_dir

# Written from the rendered description in spec §3 (independent of the Python renderer under test).
DREAM_VL_JINJA = """
{%- set ns = namespace(images=0, videos=0) -%}
{%- for message in messages -%}
  {%- if loop.first and message.role != 'system' -%}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message.role + '\\n' -}}
  {%- if message.content is string -%}
    {{- message.content -}}
  {%- else -%}
    {%- for item in message.content -%}
      {%- if item.type == 'image' or 'image' in item or 'image_url' in item -%}
        {%- set ns.images = ns.images + 1 -%}
        {%- if add_vision_id -%}{{- 'Picture ' ~ ns.images ~ ': ' -}}{%- endif -%}
        {{- '<|image_pad|>' -}}
      {%- elif item.type == 'video' or 'video' in item -%}
        {%- set ns.videos = ns.videos + 1 -%}
        {%- if add_vision_id -%}{{- 'Video ' ~ ns.videos ~ ': ' -}}{%- endif -%}
        {{- '<|video_pad|>' -}}
      {%- elif 'text' in item -%}
        {{- item.text -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""

IMG, TXT = {"type": "image"}, lambda t: {"type": "text", "text": t}
CONVERSATIONS = {
    "plain": [{"role": "user", "content": "What is 2+2?"}],
    "system": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi\n there "}],
    "image_first": [{"role": "user", "content": [IMG, TXT("Describe the image.")]}],
    "two_images_and_video": [
        {"role": "user", "content": [TXT("Compare "), IMG, TXT(" and "), {"type": "image", "image": "b.png"},
                                     {"type": "video", "video": "c.mp4"}, TXT("  please.")]},
    ],
    "multi_turn": [
        {"role": "system", "content": "You are a robot."},
        {"role": "user", "content": [{"image_url": "x"}, TXT("What should the robot do?")]},
        {"role": "assistant", "content": "Pick up the bowl."},
        {"role": "user", "content": [TXT("And now? "), IMG]},
        {"role": "assistant", "content": [TXT("Place it on the plate.")]},
    ],
    "empty_texts": [{"role": "user", "content": [TXT(""), IMG, TXT("")]}, {"role": "assistant", "content": ""}],
}


@pytest.fixture(scope="module")
def hf_template_tokenizer():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import WordLevel

    raw = RawTokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("add_vision_id", [False, True])
def test_render_matches_transformers_apply_chat_template(name, add_generation_prompt, add_vision_id,
                                                        hf_template_tokenizer):
    messages = CONVERSATIONS[name]
    expected = hf_template_tokenizer.apply_chat_template(
        messages, chat_template=DREAM_VL_JINJA, tokenize=False, add_generation_prompt=add_generation_prompt,
        add_vision_id=add_vision_id,
    )
    assert render_chat(messages, add_generation_prompt, add_vision_id) == expected


def test_render_literal_form():
    assert render_chat([{"role": "user", "content": [IMG, TXT("Hi")]}], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|image_pad|>Hi<|im_end|>\n<|im_start|>assistant\n"
    )
    two = render_chat(CONVERSATIONS["two_images_and_video"], add_vision_id=True)
    assert "Compare Picture 1: <|image_pad|> and Picture 2: <|image_pad|>Video 1: <|video_pad|>  please." in two
    assert "<|vision_start|>" not in two and "<|vision_end|>" not in two
    assert count_media(CONVERSATIONS["two_images_and_video"]) == (2, 1)


def test_expand_image_pads_string_and_ids_agree():
    text = "a<|image_pad|>b<|video_pad|>c<|image_pad|>"
    grids = np.array([[1, 16, 16], [1, 4, 6]])  # 64 and 6 merged tokens
    video = [[2, 4, 4]]  # 8
    out = expand_image_pads(text, grids, video_grid_thw=video)
    assert out == "a" + "<|image_pad|>" * 64 + "b" + "<|video_pad|>" * 8 + "c" + "<|image_pad|>" * 6
    ids = [5, 99, 6, 98, 7, 99]
    out_ids = expand_image_pads(ids, grids, video_grid_thw=video, image_pad_id=99, video_pad_id=98)
    assert out_ids == [5] + [99] * 64 + [6] + [98] * 8 + [7] + [99] * 6
    arr = expand_image_pads(np.array(ids, np.int32), grids, image_pad_id=99)
    assert arr.dtype == np.int32 and arr.tolist() == [5] + [99] * 64 + [6, 98, 7] + [99] * 6
    assert expand_image_pads(text, None) == text  # no grid: pads left as they are
    assert expand_image_pads("a<|image_pad|>", [1, 28, 28], merge_size=1) == "a" + "<|image_pad|>" * 784


def test_expand_image_pads_errors():
    with pytest.raises(ValueError, match=r"2 <\|image_pad\|> placeholder\(s\) but image_grid_thw describes 1"):
        expand_image_pads("<|image_pad|><|image_pad|>", [[1, 4, 4]])
    with pytest.raises(ValueError, match="0 <\\|video_pad\\|> placeholder"):
        expand_image_pads([1, 2, 3], None, video_grid_thw=[[1, 2, 2]], video_pad_id=9)
    with pytest.raises(ValueError, match="not divisible by merge_size"):
        expand_image_pads("<|image_pad|>", [[1, 3, 3]])
    with pytest.raises(ValueError, match=r"shape \(num_images, 3\)"):
        expand_image_pads("<|image_pad|>", [[1, 4]])
    with pytest.raises(TypeError, match="image_pad_id"):
        expand_image_pads([1, 2], [[1, 2, 2]])


def test_render_rejects_malformed_messages():
    with pytest.raises(ValueError, match="message 0: expected a dict with 'role' and 'content'"):
        render_chat([{"content": "x"}])
    with pytest.raises(ValueError, match="message 1 item 0.*neither image, video nor text"):
        render_chat([{"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ValueError, match="content must be a str or a list"):
        render_chat([{"role": "user", "content": None}])


def test_build_prompt_with_tiny_sentencepiece_tokenizer(tmp_path):
    tok = train_sentencepiece(["pick up the bowl", "what should the robot do"], tmp_path, vocab_size=300)
    messages = [{"role": "user", "content": [IMG, TXT("What should the robot do?")]}]
    ids = build_prompt(tok, messages, image_grid_thw=[[1, 16, 16]])
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert int((ids == tok.image_pad_id).sum()) == 64
    assert tok.decode(ids) == render_chat(messages, True).replace("<|image_pad|>", "<|image_pad|>" * 64)
    assert ids[-3:].tolist() == [tok.im_start_id, *tok.encode("assistant"), tok.newline_id][-3:]
    with pytest.raises(ValueError, match="1 image\\(s\\) but no image_grid_thw"):
        build_prompt(tok, messages)
    with pytest.raises(ValueError, match="describes 2 image"):
        build_prompt(tok, messages, image_grid_thw=[[1, 4, 4], [1, 4, 4]])


def test_build_prompt_with_dream_tokenizer_ids(tmp_path):
    tok = Tokenizer.from_pretrained(make_dream_dir(tmp_path / "dream", "tokenizer_json"))
    messages = [{"role": "user", "content": [IMG, TXT("What action should the robot take?")]}]
    ids = build_prompt(tok, messages, image_grid_thw=[[1, 16, 16]])
    # <|im_start|>system\n ... <|im_end|>\n<|im_start|>user\n<|image_pad|>*64 ...
    assert ids[:2].tolist() == [151644, 8948] and ids[2] == 198
    start = ids.tolist().index(151655)
    assert ids[start - 3:start].tolist() == [151644, 872, 198]
    assert (ids == 151655).sum() == 64 and ids[start + 63] == 151655 and ids[start + 64] != 151655
    assert ids[-5:].tolist() == [151645, 198, 151644, 77091, 198]
