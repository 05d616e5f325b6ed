"""Text tokenizers with one interface for the whole project.

Two backends behind :class:`Tokenizer`:

* :class:`BPETokenizer` — the Qwen2 / Dream byte-level BPE (spec §3), run by the ``tokenizers`` library and
  loaded offline from a checkpoint directory: ``tokenizer.json`` if present, else ``vocab.json`` +
  ``merges.txt`` (NFC normalizer, the Qwen2 pre-tokenization regex, byte-level pre-tokenizer and decoder,
  as ``transformers.Qwen2Tokenizer`` builds it). Added/special tokens also come from
  ``tokenizer_config.json`` (``added_tokens_decoder``) and the legacy ``added_tokens.json`` /
  ``special_tokens_map.json`` (read by transformers 4.x, the reference's pin; transformers 5 ignores them),
  each at its stated id — ids must continue the vocabulary without gaps (``tokenizers`` would silently
  renumber a token after a gap, so that is an error here).
* :class:`SentencePieceTokenizer` — a small model trained by :func:`train_sentencepiece` for tiny configs
  (file ``spm.model``). The Dream special tokens are user-defined symbols with small stable ids, ``"\\n"`` is
  a token, and byte fallback makes every text encodable.

Both recognise special tokens written inside the text as single tokens (``split_special_tokens=False``)
and expose the same role ids (``eos_id``, ``im_start_id``, ``image_pad_id``, ``mask_id``, ...), taken from the
token *names* (``<|endoftext|>``, ``<|mask|>``, ...), not from config fields: Dream's config uses
``<|endoftext|>`` for bos/eos/pad (151643) even where a Qwen ``tokenizer_config.json`` names ``<|im_end|>``.

Action tokens (Dream-VLA): :meth:`Tokenizer.add_action_tokens` appends ``<|action_0|>`` ... after the current
length as plain (non-special) added tokens — ids 151667...151922 for the real Dream tokenizer (length 151667).

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Token names (spec §3). The role attributes of every Tokenizer are looked up by these names.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
MASK = "<|mask|>"  # [INFERRED] name of Dream's id 151666
NEWLINE = "\n"

# Reserved (in this order, ids 1..9) as special symbols of a dreamjax sentencepiece model.
SPM_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD, MASK)
SPM_MODEL_FILE = "spm.model"
SPM_META_FILE = "dreamjax_tokenizer.json"

# Qwen2 pre-tokenization regex (transformers/models/qwen2/tokenization_qwen2.py, PRETOKENIZE_REGEX).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def action_token(i: int) -> str:
    return f"<|action_{i}|>"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename (no half-written files)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


class Tokenizer:
    """Common interface. Use :meth:`from_pretrained` or :func:`train_sentencepiece` to get one.

    Attributes (``None`` where the vocabulary lacks the token): ``eos_id``, ``pad_id`` (both
    ``<|endoftext|>``), ``im_start_id``, ``im_end_id``, ``image_pad_id``, ``video_pad_id``,
    ``vision_start_id``, ``vision_end_id``, ``vision_pad_id``, ``mask_id`` (``<|mask|>``), ``newline_id``
    (the single token of ``"\\n"``), ``action_token_ids`` (``[]`` unless ``<|action_0|>``... exist).
    """

    backend: str = ""

    # ---- backend hooks -------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry (for BPE: the byte-level form, e.g. ``"Ċ"`` for a newline); None if absent."""
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str:
        """Vocabulary entry of an id; IndexError if the id is not in the vocabulary."""
        raise NotImplementedError

    def _add_tokens(self, tokens: list[str], special: bool) -> None:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        """Highest id + 1: the number of embedding rows the tokenizer needs (HF ``len(tokenizer)``)."""
        raise NotImplementedError

    # ---- shared API ----------------------------------------------------------------------------
    @staticmethod
    def from_pretrained(directory: str | os.PathLike) -> Tokenizer:
        """Load from a checkpoint directory, offline.

        ``spm.model`` → :class:`SentencePieceTokenizer`; ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``
        → :class:`BPETokenizer`. Raises FileNotFoundError naming the directory and the files expected.
        """
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer directory {d} does not exist (or is not a directory)")
        if (d / SPM_MODEL_FILE).is_file():
            from dreamjax.data.tokenizer_spm import SentencePieceTokenizer

            return SentencePieceTokenizer.load(d)
        return BPETokenizer.load(d)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their single ids. No BOS/EOS added."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Ids outside ``[0, len(self))`` (e.g. unused embedding rows) are dropped, as HF does."""
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError(f"decode expects one sequence of ids (1-D), got shape {arr.shape}")
        n = len(self)
        return self._decode([int(i) for i in arr if 0 <= i < n], skip_special_tokens)

    def add_tokens(self, tokens: Sequence[str], special: bool = False) -> list[int]:
        """Append tokens not yet in the vocabulary after the current length; returns the ids of all ``tokens``."""
        new = [t for t in dict.fromkeys(tokens) if self.token_to_id(t) is None]
        if new:
            self._add_tokens(new, special)
            self._refresh_roles()
        return [self.token_to_id(t) for t in tokens]  # type: ignore[misc]

    def add_action_tokens(self, n: int = 256) -> list[int]:
        """Append ``<|action_0|>`` ... ``<|action_{n-1}|>`` as plain added tokens, as Dream-VLA does.

        Ids are ``len(self)`` ... ``len(self) + n - 1`` (151667...151922 for the Dream tokenizer). Calling it again
        with the same ``n`` is a no-op; a different ``n`` than already present raises.
        """
        if n <= 0:
            raise ValueError(f"add_action_tokens: n must be positive, got {n}")
        if self.action_token_ids:
            if len(self.action_token_ids) != n:
                raise ValueError(f"tokenizer already has {len(self.action_token_ids)} action tokens, asked for {n}")
            return list(self.action_token_ids)
        names = [action_token(i) for i in range(n)]
        clash = [t for t in names if self.token_to_id(t) is not None]
        if clash:
            raise ValueError(f"action tokens already in the vocabulary out of order: {clash[:3]}")
        start = len(self)
        self._add_tokens(names, special=False)
        self._refresh_roles()
        assert self.action_token_ids == list(range(start, start + n)), "action tokens were not appended contiguously"
        return list(self.action_token_ids)

    def special_ids(self) -> dict[str, int]:
        """Special ids under the HF config.json field names (absent tokens are left out).

        ``bos_token_id`` is ``<|endoftext|>`` as in Dream's config.json (spec §3 notes the reference eval may
        prepend a different BOS-like token; open question there).
        """
        ids = {
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
            "bos_token_id": self.eos_id,
            "mask_token_id": self.mask_id,
            "image_token_id": self.image_pad_id,
            "video_token_id": self.video_pad_id,
            "vision_start_token_id": self.vision_start_id,
            "vision_end_token_id": self.vision_end_id,
            "vision_token_id": self.vision_pad_id,
        }
        return {k: v for k, v in ids.items() if v is not None}

    def _refresh_roles(self) -> None:
        t = self.token_to_id
        self.eos_id = self.pad_id = t(ENDOFTEXT)
        self.im_start_id, self.im_end_id = t(IM_START), t(IM_END)
        self.vision_start_id, self.vision_end_id, self.vision_pad_id = t(VISION_START), t(VISION_END), t(VISION_PAD)
        self.image_pad_id, self.video_pad_id = t(IMAGE_PAD), t(VIDEO_PAD)
        self.mask_id = t(MASK)
        nl = self._encode(NEWLINE)
        self.newline_id = nl[0] if len(nl) == 1 else None
        actions: list[int] = []
        while (i := t(action_token(len(actions)))) is not None:
            actions.append(i)
        self.action_token_ids = actions

    def __repr__(self) -> str:
        return f"{type(self).__name__}(len={len(self)}, action_tokens={len(self.action_token_ids)})"


# ================================================================================================
# Byte-level BPE (Qwen2 / Dream)
# ================================================================================================


def _qwen2_bpe(vocab_path: Path, merges_path: Path):
    """The byte-level BPE transformers' Qwen2Tokenizer builds from vocab.json + merges.txt: NFC normalizer,
    Qwen2 regex split then byte-level pre-tokenizer (no prefix space), byte-level decoder, no unk."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import BPE

    try:
        model = BPE.from_file(str(vocab_path), str(merges_path), dropout=None, unk_token=None,
                              continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    except Exception as e:  # tokenizers raises a bare Exception
        raise ValueError(f"cannot read BPE files {vocab_path} + {merges_path}: {e}") from e
    tok = RawTokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _max_id(tok) -> int:
    return max(tok.get_vocab_size(with_added_tokens=False) - 1, *tok.get_added_tokens_decoder().keys(), -1)


def _added_token(content: str, token_id: int, special: bool, **fields: Any) -> dict:
    tok = {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": not special, "special": special}
    tok.update({k: v for k, v in fields.items() if k in tok and k not in ("id", "content")})
    return tok


def _special_token_strings(cfg: dict) -> list[str]:
    """Token strings a tokenizer_config.json / special_tokens_map.json names as special."""
    out = []
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens"):
        vals = cfg.get(key)
        for v in vals if isinstance(vals, list) else [vals]:
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                out.append(v)
    return out


def _wanted_added_tokens(d: Path, config: dict, ensure_endoftext: bool) -> list[tuple[str, int | None, bool, dict, Path]]:
    """(content, id or None, special, AddedToken fields, source file) named by the side files.

    Sources: tokenizer_config.json ``added_tokens_decoder`` and added_tokens.json (explicit ids); the special
    token strings of tokenizer_config.json / special_tokens_map.json (id None: appended if absent, as
    transformers does); without tokenizer.json also ``<|endoftext|>`` (Qwen2Tokenizer's default unk/eos/pad).
    """
    cfg_path, at_path, stm_path = d / "tokenizer_config.json", d / "added_tokens.json", d / "special_tokens_map.json"
    wanted: list[tuple[str, int | None, bool, dict, Path]] = []
    for sid, fields in sorted((config.get("added_tokens_decoder") or {}).items(), key=lambda kv: int(kv[0])):
        fields = dict(fields)
        wanted.append((fields.pop("content"), int(sid), bool(fields.pop("special", False)), fields, cfg_path))
    if at_path.is_file():
        for content, token_id in sorted(_read_json(at_path).items(), key=lambda kv: kv[1]):
            wanted.append((content, int(token_id), False, {}, at_path))
    specials = [(t, cfg_path) for t in _special_token_strings(config)]
    if stm_path.is_file():
        specials += [(t, stm_path) for t in _special_token_strings(_read_json(stm_path))]
    if ensure_endoftext:
        specials.insert(0, (ENDOFTEXT, cfg_path))
    wanted += [(t, None, True, {}, src) for t, src in dict(reversed(specials)).items()]
    return wanted


def _with_added_tokens(tok, wanted: list[tuple[str, int | None, bool, dict, Path]]):
    """Add the ``wanted`` tokens to ``tok`` (a tokenizers.Tokenizer) at their ids; errors name the file.

    New ids must continue the vocabulary without gaps: the ``tokenizers`` library (and so transformers)
    silently renumbers added tokens to the next free id, so a gap would make the stated ids wrong; we refuse.
    A token the files call special but the vocabulary has as plain is made special in place.
    """
    from tokenizers import AddedToken

    existing = tok.get_added_tokens_decoder()  # id -> AddedToken
    new: dict[int, tuple[dict, Path]] = {}
    new_ids: dict[str, int] = {}
    for content, token_id, special, fields, src in wanted:
        have = new_ids.get(content, tok.token_to_id(content))
        if have is not None:
            if token_id is not None and have != token_id:
                raise ValueError(f"{src}: token {content!r} has id {token_id} there but {have} in the vocabulary")
            if special and have in new:
                new[have][0]["special"] = True
            elif special and not (have in existing and existing[have].special):
                tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            continue
        if token_id is None:
            token_id = max(_max_id(tok), *new, -1) + 1
        if token_id in new or tok.id_to_token(token_id) is not None:
            other = new[token_id][0]["content"] if token_id in new else tok.id_to_token(token_id)
            raise ValueError(f"{src}: id {token_id} of {content!r} is already used by {other!r}")
        new[token_id] = (_added_token(content, token_id, special, **fields), src)
        new_ids[content] = token_id
    for token_id in sorted(new):
        fields, src = new[token_id]
        expected = _max_id(tok) + 1
        if token_id != expected:
            raise ValueError(
                f"{src}: added token {fields['content']!r} has id {token_id} but the next free id is {expected}; "
                "added-token ids must continue the vocabulary without gaps"
            )
        fields = {k: v for k, v in fields.items() if k != "id"}
        (tok.add_special_tokens if fields["special"] else tok.add_tokens)([AddedToken(**fields)])
        assert tok.token_to_id(fields["content"]) == token_id
    return tok


class BPETokenizer(Tokenizer):
    """Qwen2/Dream byte-level BPE on the ``tokenizers`` library."""

    backend = "bpe"

    def __init__(self, tok, config: dict | None = None, source: str = "<memory>"):
        self._tok = tok  # a tokenizers.Tokenizer
        self._config = dict(config or {})  # tokenizer_config.json, kept for save()
        self._source = source
        self._len = _max_id(tok) + 1
        self._refresh_roles()

    @classmethod
    def load(cls, d: Path) -> BPETokenizer:
        from tokenizers import Tokenizer as RawTokenizer

        tj, vj, mt = d / "tokenizer.json", d / "vocab.json", d / "merges.txt"
        if tj.is_file():
            try:
                tok = RawTokenizer.from_file(str(tj))
            except Exception as e:  # tokenizers raises a bare Exception
                raise ValueError(f"{tj}: not a readable tokenizers tokenizer.json ({e})") from e
        elif vj.is_file() and mt.is_file():
            tok = _qwen2_bpe(vj, mt)
        else:
            missing = [p.name for p in (vj, mt) if not p.is_file()]
            raise FileNotFoundError(
                f"no tokenizer in {d}: expected {SPM_MODEL_FILE}, or tokenizer.json, or vocab.json + merges.txt "
                f"(missing: {', '.join(missing)}; found: {sorted(p.name for p in d.iterdir()) or 'nothing'})"
            )
        config = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
        tok = _with_added_tokens(tok, _wanted_added_tokens(d, config, ensure_endoftext=not tj.is_file()))
        return cls(tok, config, source=str(d))

    # -- backend hooks
    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        tok = self._tok.id_to_token(int(token_id))
        if tok is None:
            raise IndexError(f"token id {token_id} is not in the vocabulary (len {len(self)})")
        return tok

    def _add_tokens(self, tokens: list[str], special: bool) -> None:
        from tokenizers import AddedToken

        # transformers' add_tokens(str) makes AddedToken(normalized=not special, special=special); same here.
        added = [AddedToken(t, special=special, normalized=not special) for t in tokens]
        (self._tok.add_special_tokens if special else self._tok.add_tokens)(added)
        self._len = _max_id(self._tok) + 1

    def __len__(self) -> int:
        return self._len

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` (loadable here and by transformers)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = json.loads(self._tok.to_str())
        config = dict(self._config) or {
            "tokenizer_class": "Qwen2Tokenizer", "errors": "replace", "clean_up_tokenization_spaces": False,
            "split_special_tokens": False, "add_prefix_space": False, "bos_token": None,
            "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT, "unk_token": None,
        }
        fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
        config["added_tokens_decoder"] = {
            str(t["id"]): {k: t[k] for k in fields} for t in sorted(spec["added_tokens"], key=lambda t: t["id"])
        }
        _atomic_write(d / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=2).encode("utf-8"))
        _atomic_write(d / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2).encode("utf-8"))


def __getattr__(name):  # the sentencepiece backend lives in tokenizer_spm (lazy: no import cycle)
    if name in ("SentencePieceTokenizer", "train_sentencepiece"):
        from dreamjax.data import tokenizer_spm

        return getattr(tokenizer_spm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
