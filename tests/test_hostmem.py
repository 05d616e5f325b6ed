"""dreamjax.hostmem: a compute process reuses the memory of its previous step instead of faulting it in again."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import resource, sys
    if sys.argv[1] == "reuse":
        from dreamjax.hostmem import reuse_freed_memory
        assert reuse_freed_memory()
    import jax, jax.numpy as jnp
    x = jnp.ones((4096, 1024), jnp.float32)
    f = jax.jit(lambda x: jnp.sum((x @ x.T) @ x))  # x·xᵀ is a 64 MB temporary of every call
    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults)
""")


def _faults(mode):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("DREAMJAX_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning (Linux)")
def test_repeated_steps_reuse_their_temporaries():
    first, *again = _faults("reuse")
    assert first > 10_000  # the first call maps its 64 MB (16 384 pages) in
    assert sum(again) < 1_000, again  # later calls reuse them
    # what the tuning is for: with malloc's defaults every call maps its temporaries in again
    assert min(_faults("default")[1:]) > 10_000


def test_opt_out(monkeypatch):
    import dreamjax.hostmem as hostmem

    monkeypatch.setattr(hostmem, "_done", False)
    monkeypatch.setenv("DREAMJAX_MALLOC", "default")
    assert hostmem.reuse_freed_memory() is False
