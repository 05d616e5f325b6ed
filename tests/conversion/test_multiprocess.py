"""Two processes (jax.distributed on CPU, gloo) convert one checkpoint together onto an 8-device mesh, each
reading only the slices its 4 devices own; a single process then restores the result identically."""

import json
import socket
import subprocess
import sys
from pathlib import Path

from conversion.safetensors_io import SafetensorsDir
from dreamjax import cli
from tests.conversion.test_roundtrip import _same_tensors

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_convert_together(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.conversion.multiprocess_convert", str(i), str(port),
                               str(tmp_path / "hf"), str(tmp_path / "ckpt"), str(tmp_path / f"reads{i}.json")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n\n".join(o[-3000:] for o in outputs)

    src = SafetensorsDir(tmp_path / "hf")
    total = sum(src.get(k).nbytes for k in src.keys())
    reads = [json.loads((tmp_path / f"reads{i}.json").read_text()) for i in range(2)]
    # Process p holds the fsdp half p of every param (mesh fsdp=2 spans the processes, tensor=4 lies inside
    # each): it reads that half of each fsdp-sharded tensor, and whole only the small params with no fsdp axis.
    for r in reads:
        assert 0.45 * total < r["bytes_read"] < 0.6 * total, (r, total)
    assert sum(r["bytes_read"] for r in reads) >= total, "together the processes read every tensor"

    # one process restores the result: export it and compare every tensor with the source
    assert cli.main(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    _same_tensors(tmp_path / "hf", tmp_path / "back")
