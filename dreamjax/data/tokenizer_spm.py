"""SentencePiece backend of :class:`dreamjax.data.tokenizer.Tokenizer` for tiny configs.

:func:`train_sentencepiece` trains a small model on a dataset's texts (deterministic: one thread, fixed
seed) with Dream's special tokens as user-defined symbols at small stable ids, ``"\\n"`` as a token and
byte fallback, so tiny models use the same special-token interface as the real Qwen2/Dream tokenizer.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from dreamjax.data.tokenizer import NEWLINE, SPM_META_FILE, SPM_MODEL_FILE, SPM_SPECIAL_TOKENS
from dreamjax.data.tokenizer import Tokenizer, _atomic_write, _read_json


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _user_defined_piece_bytes(piece: str) -> bytes:
    """Serialized ``ModelProto.pieces`` entry {piece, score 0, type USER_DEFINED}.

    Protobuf merges repeated fields on concatenation, so appending these bytes to a model appends pieces
    (no protobuf dependency needed).
    """
    p = piece.encode("utf-8")
    body = b"\x0a" + _varint(len(p)) + p + b"\x15" + struct.pack("<f", 0.0) + b"\x18" + _varint(4)
    return b"\x0a" + _varint(len(body)) + body


class SentencePieceTokenizer(Tokenizer):
    """A dreamjax sentencepiece model (see :func:`train_sentencepiece`): identity normalization, no dummy
    prefix, byte fallback, Dream special tokens and ``"\\n"`` as user-defined symbols."""

    backend = "sentencepiece"

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        self._source = source
        self._set_proto(bytes(model_proto))
        self._special = {i for i in (self.token_to_id(t) for t in SPM_SPECIAL_TOKENS) if i is not None}
        self._special |= {i for i in range(len(self)) if self._sp.is_unknown(i) or self._sp.is_control(i)}
        self._refresh_roles()

    def _set_proto(self, proto: bytes) -> None:
        import sentencepiece as spm

        try:
            sp = spm.SentencePieceProcessor(model_proto=proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with terse messages
            raise ValueError(f"{self._source}: not a valid sentencepiece model ({e})") from e
        self._sp, self._proto = sp, proto

    @classmethod
    def load(cls, d: Path) -> SentencePieceTokenizer:
        tok = cls((d / SPM_MODEL_FILE).read_bytes(), source=str(d / SPM_MODEL_FILE))
        if (d / SPM_META_FILE).is_file():  # tokens added later with add_tokens(special=True)
            names = _read_json(d / SPM_META_FILE).get("special_tokens", {})
            tok._special |= {i for i in map(tok.token_to_id, names) if i is not None}
        return tok

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        return self._sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None  # unknown pieces map to unk_id

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= int(token_id) < len(self):
            raise IndexError(f"token id {token_id} is not in the vocabulary (len {len(self)})")
        return self._sp.id_to_piece(int(token_id))

    def _add_tokens(self, tokens: list[str], special: bool) -> None:
        self._set_proto(self._proto + b"".join(_user_defined_piece_bytes(t) for t in tokens))
        if special:
            self._special |= {self._sp.piece_to_id(t) for t in tokens}

    def __len__(self) -> int:
        return self._sp.get_piece_size()

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``spm.model`` and ``dreamjax_tokenizer.json`` (special tokens, role ids; informational except
        ``special_tokens``, which marks what ``skip_special_tokens`` drops)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"backend": self.backend, "model_file": SPM_MODEL_FILE, "len": len(self),
                "special_tokens": {self._sp.id_to_piece(i): i for i in sorted(self._special)},
                "newline_id": self.newline_id, "num_action_tokens": len(self.action_token_ids),
                "special_ids": self.special_ids()}
        _atomic_write(d / SPM_MODEL_FILE, self._proto)
        _atomic_write(d / SPM_META_FILE, json.dumps(meta, indent=2).encode("utf-8"))

    @property
    def model_proto(self) -> bytes:
        return self._proto


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | os.PathLike | None = None,
    vocab_size: int = 512,
    *,
    model_type: str = "bpe",
    num_action_tokens: int = 0,
    seed: int = 0,
) -> SentencePieceTokenizer:
    """Train a small deterministic sentencepiece tokenizer (e.g. on a dataset's instructions).

    Ids: 0 ``<unk>``, 1..9 the Dream special tokens in :data:`SPM_SPECIAL_TOKENS` order, 10 ``"\\n"``, then the
    256 byte-fallback pieces (11..266) and the learned pieces. ``vocab_size`` is an upper
    bound (a small corpus yields fewer pieces; ``len()`` tells). ``num_action_tokens`` > 0 appends the action
    tokens at the end like :meth:`Tokenizer.add_action_tokens`. Single-threaded with a fixed seed, so the same
    texts give the same model bytes. Saved to ``out_dir`` when given.
    """
    import sentencepiece as spm

    sentences = [s for t in texts for s in str(t).split("\n") if s]
    if not sentences:
        raise ValueError("train_sentencepiece: no non-empty training texts")
    symbols = [*SPM_SPECIAL_TOKENS, NEWLINE]
    min_size = 1 + len(symbols) + 256 + 1
    if vocab_size < min_size:
        raise ValueError(f"train_sentencepiece: vocab_size {vocab_size} < {min_size} (specials + 256 bytes + 1)")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            user_defined_symbols=symbols, byte_fallback=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            split_digits=True, allow_whitespace_only_pieces=True, character_coverage=1.0, hard_vocab_limit=False,
            num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"train_sentencepiece failed on {len(sentences)} sentences: {e}") from e
    tok = SentencePieceTokenizer(model.getvalue())
    if num_action_tokens:
        tok.add_action_tokens(num_action_tokens)
    if out_dir is not None:
        tok.save(out_dir)
        tok._source = str(Path(out_dir) / SPM_MODEL_FILE)
    return tok
