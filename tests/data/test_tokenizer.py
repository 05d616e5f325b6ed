"""dreamjax.data.tokenizer: Qwen2/Dream BPE parity with transformers on real files, special ids, action
tokens, the sentencepiece backend for tiny configs, save/load, and errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from dreamjax.data.tokenizer import (
    SPM_SPECIAL_TOKENS,
    BPETokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    train_sentencepiece,
)
from tests.data.qwen_tokenizer_files import added_entry, make_dream_dir, make_qwen_dir, make_tiny_bpe_dir, qwen_files

CORPUS = [
    "Hello, world! This is a test.",
    "In: What action should the robot take to pick up the black bowl and place it on the plate?\nOut:",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != None: pass\r\n",
    'import numpy as np; a = np.zeros((3, 4), dtype="float32")[..., ::-1]',
    "Numbers: 0 7 42 1234567890 3.14159 -2.5e-10 1,000,000 0x1F",
    "日本語のテキスト、中文文本，한국어 텍스트, Ελληνικά, Русский, العربية, हिन्दी",
    "Emoji 🤖🦾👍🏽 👨‍👩‍👧 flags 🇫🇷 and symbols ∑∫√ ≠ ≤ ©®™",
    "   leading spaces, trailing spaces   ",
    "many\n\n\n\nnewlines and     runs of      spaces\t\t\ttabs",
    "contractions: don't, I'LL, we've, she's, THEY'RE, it'd",
    "e\u0301 (combining acute, NFC → é), ﬁ ligature, Å vs A\u030a",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|image_pad|><|image_pad|>Describe.<|im_end|>\n<|im_start|>assistant\n",
    "<|vision_start|><|image_pad|><|vision_end|><|video_pad|><|vision_pad|><|endoftext|>",
    "not quite special: <|im_start <im_start|> <|IM_START|> <|image_pad|x",
    "text<|im_end|>glued<|endoftext|>together",
    "<|mask|><|mask|> <|beginoftext|> (real tokens in the Dream layout, plain text in Qwen's)",
    "",
    " ",
    "\n",
]

QWEN_SPECIAL_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}
LAYOUTS = ["qwen/tokenizer_json", "qwen/vocab_merges", "dream/tokenizer_json", "dream/vocab_merges"]


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    qwen_files()
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for layout in LAYOUTS:
        family, kind = layout.split("/")
        make = make_qwen_dir if family == "qwen" else make_dream_dir
        out[layout] = make(root / family / kind, kind)
    return out


@pytest.fixture(scope="module")
def ours(tok_dirs):
    return {k: Tokenizer.from_pretrained(d) for k, d in tok_dirs.items()}


@pytest.fixture(scope="module")
def hf(tok_dirs):
    transformers = pytest.importorskip("transformers")
    return {k: transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True) for k, d in tok_dirs.items()}


# ---------------------------------------------------------------------------------------------------------
# Real Qwen2-family files: parity with transformers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bpe_ids_and_decode_match_transformers(layout, ours, hf):
    tok, ref = ours[layout], hf[layout]
    assert isinstance(tok, BPETokenizer)
    assert len(tok) == len(ref)
    assert type(ref).__name__ == "Qwen2Tokenizer"
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False) == ref(text)["input_ids"], text
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
        # Round trip up to the NFC normalizer.
        assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    assert tok.encode_batch(CORPUS) == [tok.encode(t) for t in CORPUS]
    for i in (0, 198, 9707, 151643, 151655, len(tok) - 1):
        assert tok.id_to_token(i) == ref.convert_ids_to_tokens(i)
        assert tok.token_to_id(tok.id_to_token(i)) == i


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bpe_special_ids_follow_spec(layout, ours):
    tok = ours[layout]
    for token, i in QWEN_SPECIAL_IDS.items():
        assert tok.token_to_id(token) == i
        assert tok.encode(token) == [i]
    assert (tok.eos_id, tok.pad_id, tok.im_start_id, tok.im_end_id) == (151643, 151643, 151644, 151645)
    assert (tok.vision_start_id, tok.vision_end_id, tok.vision_pad_id) == (151652, 151653, 151654)
    assert (tok.image_pad_id, tok.video_pad_id, tok.newline_id) == (151655, 151656, 198)
    assert tok.action_token_ids == []
    if layout.startswith("qwen"):
        # The shipped files are Qwen3's: no <|mask|>, 151665.. are tool/think tokens, len 151669.
        assert tok.mask_id is None and len(tok) == 151669
        assert "mask_token_id" not in tok.special_ids()
    else:
        assert tok.mask_id == 151666 and tok.token_to_id("<|beginoftext|>") == 151665 and len(tok) == 151667
        assert tok.special_ids() == {
            "eos_token_id": 151643, "pad_token_id": 151643, "bos_token_id": 151643, "mask_token_id": 151666,
            "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653, "vision_token_id": 151654,
        }


def test_dream_action_tokens_match_transformers_and_survive_save(tok_dirs, tmp_path):
    tok = Tokenizer.from_pretrained(tok_dirs["dream/vocab_merges"])
    ids = tok.add_action_tokens(256)
    assert ids == list(range(151667, 151923)) == tok.action_token_ids
    assert len(tok) == 151923
    assert tok.add_action_tokens(256) == ids  # idempotent
    with pytest.raises(ValueError, match="already has 256 action tokens"):
        tok.add_action_tokens(8)
    # Dream-VLA's constant: ACTION_TOKEN_BEGIN_IDX = len(tokenizer) - 257 = 151666.
    assert len(tok) - 257 == 151666
    text = "In: pick<|action_0|><|action_17|><|action_255|><|im_end|>\n<|action_256|>"
    enc = tok.encode(text)
    assert enc[enc.index(151667):][:4] == [151667, 151684, 151922, 151645]
    assert tok.decode([151667, 151922], skip_special_tokens=True) == "<|action_0|><|action_255|>"  # not special

    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(tok_dirs["dream/vocab_merges"]), local_files_only=True)
    ref.add_tokens([f"<|action_{i}|>" for i in range(256)])
    assert len(ref) == len(tok)
    for t in (text, *CORPUS[:4]):
        assert tok.encode(t) == ref.encode(t, add_special_tokens=False)

    tok.save(tmp_path / "saved")
    back = Tokenizer.from_pretrained(tmp_path / "saved")
    assert len(back) == 151923 and back.action_token_ids == ids and back.mask_id == 151666
    ref_back = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"), local_files_only=True)
    for t in (text, *CORPUS):
        assert back.encode(t) == tok.encode(t) == ref_back.encode(t, add_special_tokens=False)


def test_decode_accepts_arrays_and_drops_ids_past_the_vocabulary(ours):
    tok = ours["dream/tokenizer_json"]
    ids = tok.encode("pick up the bowl")
    assert tok.decode(np.asarray(ids, np.int32)) == "pick up the bowl"
    assert tok.decode([*ids, 152000, 152063]) == "pick up the bowl"  # unused embedding rows (vocab 152064)
    with pytest.raises(IndexError):
        tok.id_to_token(152000)
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 3), np.int32))
    assert tok.token_to_id("<|no_such_token|>") is None


# ---------------------------------------------------------------------------------------------------------
# Sentencepiece backend (tiny configs)
# ---------------------------------------------------------------------------------------------------------

_OBJECTS = ["black bowl", "red mug", "plate", "alphabet soup", "cream cheese", "ketchup", "wine bottle",
            "butter", "tomato sauce", "basket"]
_PLACES = ["on the plate", "in the basket", "on the stove", "in the top drawer", "on the cabinet",
           "to the left of the bowl", "on the wooden tray", "in the microwave", "on top of the shelf",
           "next to the cup"]
INSTRUCTIONS = [f"put the {o} {p}" for o, p in zip(_OBJECTS, _PLACES)]
INSTRUCTIONS += [f"pick up the {o} and place it {p}" for o, p in zip(_OBJECTS, reversed(_PLACES))]
INSTRUCTIONS += [f"open the {d} drawer of the cabinet" for d in ("top", "middle", "bottom")]
INSTRUCTIONS += ["turn on the stove", "turn off the stove", "close the microwave", "open the microwave",
                 "push the plate to the front of the stove", "put both the soup and the sauce in the basket",
                 "stack the left bowl on the right bowl and place them in the tray",
                 "Move the pot from the left burner to the right one.", "Fold the cloth from left to right!",
                 "sweep the beans into the dustpan (2x)", "flip the cup upright", "wipe the table with the sponge",
                 "put the eggplant in the pot", "put the carrot on the plate", "take the spoon out of the drawer",
                 "place the spatula 10 cm to the right", "close the laptop lid", "open the fridge door",
                 "put the green block on top of the yellow block", "rotate the knob 90 degrees",
                 "pour the water into the glass", "hang the mug on the rack", "slide the box to the edge",
                 "press the red button twice", "unplug the charger", "pick the apple, then the banana",
                 "drop the ball in the bin"]


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    train_sentencepiece(INSTRUCTIONS, d, vocab_size=400)
    return d


def test_sentencepiece_special_tokens_are_single_stable_ids(spm_dir):
    assert len(INSTRUCTIONS) >= 50
    tok = Tokenizer.from_pretrained(spm_dir)
    assert isinstance(tok, SentencePieceTokenizer) and len(tok) <= 400
    # Stable layout: 0 <unk>, 1..9 the Dream specials, 10 "\n".
    assert [tok.token_to_id(t) for t in SPM_SPECIAL_TOKENS] == list(range(1, 10))
    assert (tok.eos_id, tok.pad_id, tok.im_start_id, tok.im_end_id) == (1, 1, 2, 3)
    assert (tok.vision_start_id, tok.vision_end_id, tok.vision_pad_id) == (4, 5, 6)
    assert (tok.image_pad_id, tok.video_pad_id, tok.mask_id, tok.newline_id) == (7, 8, 9, 10)
    assert tok.special_ids() == {
        "eos_token_id": 1, "pad_token_id": 1, "bos_token_id": 1, "mask_token_id": 9, "image_token_id": 7,
        "video_token_id": 8, "vision_start_token_id": 4, "vision_end_token_id": 5, "vision_token_id": 6,
    }
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 2 and ids[-1] == 3 and 10 in ids
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.encode("a<|image_pad|><|image_pad|>b").count(7) == 2
    meta = json.loads((spm_dir / "dreamjax_tokenizer.json").read_text())
    assert meta["backend"] == "sentencepiece" and meta["special_ids"] == tok.special_ids()


def test_sentencepiece_round_trip_and_any_text_encodes(spm_dir):
    tok = Tokenizer.from_pretrained(spm_dir)
    for text in INSTRUCTIONS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert len(ids) < len(text)  # learned pieces, not bytes/characters only
    for text in CORPUS:  # unseen scripts and symbols go through byte fallback
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(INSTRUCTIONS[:3]) == [tok.encode(t) for t in INSTRUCTIONS[:3]]


def test_sentencepiece_save_load_and_determinism(spm_dir, tmp_path):
    tok = Tokenizer.from_pretrained(spm_dir)
    again = train_sentencepiece(INSTRUCTIONS, tmp_path / "again", vocab_size=400)
    assert again.model_proto == (spm_dir / "spm.model").read_bytes()  # same texts → same model bytes
    # ... also in a fresh process (sentencepiece's RNG is process-global).
    code = ("import json, sys; from dreamjax.data.tokenizer import train_sentencepiece; "
            "sys.stdout.write(train_sentencepiece(json.loads(sys.argv[1]), vocab_size=400).model_proto.hex())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(INSTRUCTIONS)], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    assert bytes.fromhex(out) == again.model_proto
    tok.save(tmp_path / "copy")
    back = Tokenizer.from_pretrained(tmp_path / "copy")
    for text in INSTRUCTIONS + CORPUS:
        assert back.encode(text) == tok.encode(text) == again.encode(text)


def test_sentencepiece_action_tokens_appended_at_the_end(spm_dir, tmp_path):
    tok = Tokenizer.from_pretrained(spm_dir)
    n0 = len(tok)
    ids = tok.add_action_tokens(16)
    assert ids == list(range(n0, n0 + 16)) and len(tok) == n0 + 16
    assert tok.encode("<|action_3|><|action_15|>") == [n0 + 3, n0 + 15]
    assert tok.decode([n0 + 3, 1], skip_special_tokens=True) == "<|action_3|>"
    tok.add_tokens(["<|beginoftext|>"], special=True)
    tok.save(tmp_path / "act")
    back = Tokenizer.from_pretrained(tmp_path / "act")
    assert back.action_token_ids == ids and back.mask_id == 9
    assert back.token_to_id("<|beginoftext|>") == n0 + 16 == len(back) - 1
    assert back.decode(back.encode("<|beginoftext|>go<|action_0|>"), skip_special_tokens=True) == "go<|action_0|>"
    trained = train_sentencepiece(INSTRUCTIONS, None, vocab_size=400, num_action_tokens=16)
    assert trained.action_token_ids == ids


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


def test_missing_directory_or_files_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty}.*vocab.json, merges.txt"):
        Tokenizer.from_pretrained(empty)
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{half}.*missing: merges.txt"):
        Tokenizer.from_pretrained(half)


def test_side_files_add_tokens_at_their_ids(tmp_path):
    # added_tokens.json and special_tokens_map.json are the legacy files transformers 4.x (the reference's
    # pin) reads; a plain vocabulary token named special becomes special (skipped by skip_special_tokens).
    d = make_tiny_bpe_dir(
        tmp_path / "tiny", {260: added_entry("<|endoftext|>"), 261: added_entry("<|im_start|>")},
        added_tokens={"<x>": 262}, special_tokens_map={"additional_special_tokens": ["<|mask|>", "Ġthe"]},
    )
    tok = Tokenizer.from_pretrained(d)
    assert len(tok) == 264
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<x>", "<|mask|>")] == [260, 261, 262, 263]
    assert (tok.eos_id, tok.im_start_id, tok.mask_id, tok.image_pad_id) == (260, 261, 263, None)
    ids = tok.encode(" the a<|mask|><x><|im_start|>")
    assert ids == [258, 259, 263, 262, 261]
    assert tok.decode(ids, skip_special_tokens=True) == " a<x>"


def test_inconsistent_added_token_ids_are_rejected(tmp_path):
    eot = added_entry("<|endoftext|>")
    d = make_tiny_bpe_dir(tmp_path / "twice", {260: eot, 261: added_entry("<|mask|>"), 262: eot})
    with pytest.raises(ValueError, match=r"tokenizer_config.json: token '<\|endoftext\|>' has id 262 there but 260"):
        Tokenizer.from_pretrained(d)
    d = make_tiny_bpe_dir(tmp_path / "clash", {260: eot}, added_tokens={"<x>": 100})
    with pytest.raises(ValueError, match=r"added_tokens.json: id 100 of '<x>' is already used by"):
        Tokenizer.from_pretrained(d)
    # tokenizers/transformers would silently renumber a token after a gap: refuse instead.
    d = make_tiny_bpe_dir(tmp_path / "gap", {260: eot, 265: added_entry("<|mask|>")})
    with pytest.raises(ValueError, match=r"'<\|mask\|>' has id 265 but the next free id is 261"):
        Tokenizer.from_pretrained(d)
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer.from_pretrained(d)
    (d / "tokenizer_config.json").unlink()
    (d / "merges.txt").write_text("#version: 0.2\nĠ t extra\n")
    with pytest.raises(ValueError, match="cannot read BPE files"):
        Tokenizer.from_pretrained(d)


def test_sentencepiece_training_input_errors(tmp_path):
    with pytest.raises(ValueError, match="no non-empty training texts"):
        train_sentencepiece(["", "\n"], tmp_path / "x", vocab_size=400)
    with pytest.raises(ValueError, match="vocab_size 100"):
        train_sentencepiece(INSTRUCTIONS, tmp_path / "x", vocab_size=100)
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "spm.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        Tokenizer.from_pretrained(bad)


def test_library_does_not_import_torch_or_transformers():
    code = ("import sys, dreamjax.data.tokenizer, dreamjax.data.chat_template; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

