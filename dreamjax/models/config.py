"""Model configuration for Dream-VL (and the text-only Dream LLM).

One frozen dataclass holds the architecture (what an HF ``config.json`` says) plus the runtime knobs that
never appear in a checkpoint (compute dtype, scanned layers, attention implementation, remat).

``DreamVLConfig.from_hf_dict`` reads the three layouts a user arrives with:

* Dream-VL / Dream-VLA ``config.json`` (``model_type`` ``dream-vl`` / ``dream-vla``): flat LLM fields plus
  ``vision_config``; a ``projector`` MLP sits between the Qwen2-VL merger and the LLM (spec §1.4).
* transformers ``Qwen2VLConfig`` (``model_type`` ``qwen2_vl``; nested ``text_config``, M-RoPE sections in
  ``rope_parameters``/``rope_scaling``): no projector. Used by the PyTorch parity tests.
* text-only Dream / Qwen2 (``model_type`` ``Dream`` / ``qwen2``, no ``vision_config``): no vision tower.

Missing fields take the reference class defaults (spec §1.1), except where the reference's default could
not have produced the shipped checkpoint; unknown keys are kept in ``extra`` so export writes them back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

VISION_MODEL_TYPES = ("dream-vl", "dream-vla", "qwen2_vl")
ATTENTION_IMPLS = ("xla", "jax", "cudnn", "splash", "splash_interpret")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Qwen2-VL ViT + PatchMerger (spec §1.3)."""

    depth: int = 32
    embed_dim: int = 1280
    num_heads: int = 16
    mlp_ratio: float = 4.0
    hidden_size: int = 3584  # merger output width (= LLM hidden size)
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        """Length of one pixel row fed to the patch embedding: C·T·P·P (1176 for the 7B tower)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merged_dim(self) -> int:
        """Width of one merged window: embed_dim · merge² (5120 for the 7B tower)."""
        return self.embed_dim * self.spatial_merge_size**2

    def validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"vision_config.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if (self.head_dim // 2) % 2:
            raise ValueError(f"vision head_dim={self.head_dim} must be a multiple of 4 for the 2-D rotary")
        if self.hidden_act != "quick_gelu":
            raise ValueError(f"vision_config.hidden_act={self.hidden_act!r}: only 'quick_gelu' (Qwen2-VL) is supported")


@dataclasses.dataclass(frozen=True)
class DreamVLConfig:
    """Dream-VL architecture (spec §1.1) plus runtime settings.

    Runtime fields (``dtype`` … ``remat``) are not part of a checkpoint's config.json.
    """

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False
    use_projector: bool = True
    projector_hidden_act: str = "gelu"
    bos_token_id: int = 151643
    eos_token_id: int = 151643
    pad_token_id: int = 151643
    mask_token_id: int = 151666
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int = 151654
    vision: VisionConfig | None = dataclasses.field(default_factory=VisionConfig)
    model_type: str = "dream-vl"
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    # ---- runtime (not serialized into config.json) ----
    dtype: str = "float32"  # activation/compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    attention_impl: str = "xla"
    remat: str = "none"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **kw) -> "DreamVLConfig":
        return dataclasses.replace(self, **kw)

    def validate(self) -> "DreamVLConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(f"mrope_section={list(self.mrope_section)} must sum to head_dim/2={self.head_dim // 2}")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r}: only 'silu' is supported")
        if self.use_projector and self.projector_hidden_act != "gelu":
            raise ValueError(f"projector_hidden_act={self.projector_hidden_act!r}: only exact 'gelu' is supported")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name}={getattr(self, name)!r}; expected float32, bfloat16 or float16")
        if self.vision is not None:
            self.vision.validate()
            if self.vision.hidden_size != self.hidden_size:
                raise ValueError(f"vision_config.hidden_size={self.vision.hidden_size} must equal the LLM "
                                 f"hidden_size={self.hidden_size} (the merger feeds the LLM)")
        return self

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **runtime) -> "DreamVLConfig":
        """Build from a parsed HF ``config.json`` (any of the three layouts in the module docstring)."""
        d = dict(d)
        model_type = d.get("model_type", "dream-vl")
        text = dict(d.get("text_config") or {}) if model_type == "qwen2_vl" else {}

        def get(key, default):
            for src in (text, d):
                if key in src and src[key] is not None:
                    return src[key]
            return default

        rope = get("rope_parameters", None) or get("rope_scaling", None) or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
            raise ValueError(f"config.json: rope scaling {rope!r} is not supported (only the default rotary)")
        mrope = tuple(get("mrope_section", None) or rope.get("mrope_section") or ())
        hidden = int(get("hidden_size", 4096))
        heads = int(get("num_attention_heads", 32))
        if not mrope:
            # Text-only checkpoints have no M-RoPE; all three sections then read the same 1-D positions.
            mrope = (hidden // heads // 2, 0, 0)
        eos = get("eos_token_id", 151643)
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        vision = None
        if "vision_config" in d and d["vision_config"] is not None:
            v = dict(d["vision_config"])
            vision = VisionConfig(
                depth=int(v.get("depth", 32)), embed_dim=int(v.get("embed_dim", 1280)),
                num_heads=int(v.get("num_heads", 16)), mlp_ratio=float(v.get("mlp_ratio", 4)),
                hidden_size=int(v.get("hidden_size", 3584)), in_channels=int(v.get("in_channels", 3)),
                patch_size=int(v.get("patch_size", 14)), temporal_patch_size=int(v.get("temporal_patch_size", 2)),
                spatial_merge_size=int(v.get("spatial_merge_size", 2)), hidden_act=v.get("hidden_act", "quick_gelu"))
        known = {f.name for f in dataclasses.fields(cls)} | {
            "text_config", "vision_config", "rope_parameters", "rope_scaling", "projector_hidden_act"}
        extra = {k: v for k, v in d.items() if k not in known}
        cfg = cls(
            vocab_size=int(get("vocab_size", 151936)), hidden_size=hidden,
            intermediate_size=int(get("intermediate_size", 22016)),
            num_hidden_layers=int(get("num_hidden_layers", 32)), num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads", heads)), hidden_act=get("hidden_act", "silu"),
            rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
            rope_theta=float(get("rope_theta", None) or rope.get("rope_theta", 10000.0)),
            mrope_section=mrope, max_position_embeddings=int(get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            use_projector=model_type in ("dream-vl", "dream-vla") and vision is not None,
            projector_hidden_act=d.get("projector_hidden_act") or "gelu",
            bos_token_id=int(get("bos_token_id", None) or 151643), eos_token_id=int(eos),
            pad_token_id=int(get("pad_token_id", None) or 151643),
            mask_token_id=int(get("mask_token_id", 151666)), image_token_id=int(get("image_token_id", 151655)),
            video_token_id=int(get("video_token_id", 151656)),
            vision_start_token_id=int(get("vision_start_token_id", 151652)),
            vision_end_token_id=int(get("vision_end_token_id", 151653)),
            vision_token_id=int(get("vision_token_id", 151654)),
            vision=vision, model_type=model_type, extra=extra, **runtime)
        return cfg.validate()

    def to_hf_dict(self) -> dict[str, Any]:
        """The Dream-VL ``config.json`` layout (flat LLM fields + ``vision_config``)."""
        d: dict[str, Any] = dict(self.extra)
        d.update(
            model_type=self.model_type, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            hidden_act=self.hidden_act, rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
            rope_scaling=None, mrope_section=list(self.mrope_section),
            max_position_embeddings=self.max_position_embeddings, tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
            mask_token_id=self.mask_token_id, image_token_id=self.image_token_id,
            video_token_id=self.video_token_id, vision_start_token_id=self.vision_start_token_id,
            vision_end_token_id=self.vision_end_token_id, vision_token_id=self.vision_token_id)
        if self.use_projector:
            d["projector_hidden_act"] = self.projector_hidden_act
        if self.vision is not None:
            v = self.vision
            d["vision_config"] = dict(
                depth=v.depth, embed_dim=v.embed_dim, num_heads=v.num_heads, mlp_ratio=v.mlp_ratio,
                hidden_size=v.hidden_size, in_channels=v.in_channels, patch_size=v.patch_size,
                temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size,
                hidden_act=v.hidden_act)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DreamVLConfig":
        """From a plain (ml_collections) dict whose keys are this dataclass's fields; ``vision`` a dict or None."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}; known: {sorted(names)}")
        if isinstance(d.get("vision"), Mapping):
            vnames = {f.name for f in dataclasses.fields(VisionConfig)}
            vunknown = sorted(set(d["vision"]) - vnames)
            if vunknown:
                raise ValueError(f"model.vision config: unknown field(s) {vunknown}; known: {sorted(vnames)}")
            d["vision"] = VisionConfig(**d["vision"])
        if "mrope_section" in d:
            d["mrope_section"] = tuple(d["mrope_section"])
        return cls(**d).validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d
