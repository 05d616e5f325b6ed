"""Test-wide setup: 8 host CPU devices for mesh tests (must happen before jax is imported)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Shared fixtures (`hf_model`, `batch`): a tiny transformers Qwen2-VL and inputs for it.
pytest_plugins = ["tests.hf_fixtures"]
