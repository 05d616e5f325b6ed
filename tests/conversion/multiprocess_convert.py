"""Run by test_multiprocess.py in each of 2 processes: `python -m tests.conversion.multiprocess_convert
PROCESS_ID PORT SRC OUT RECORD`. Joins a 2-process jax.distributed CPU cluster (gloo, 4 devices each),
converts SRC on an 8-device mesh, and records which blocks of which tensors this process read."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"


def main() -> None:
    pid, port, src, out, record = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=120)
    from conversion import hf_import
    from dreamjax import sharding

    reads = []
    read_block = hf_import._read_block

    def recording_read_block(*args, **kwargs):
        block = read_block(*args, **kwargs)
        reads.append(int(block.nbytes))
        return block

    hf_import._read_block = recording_read_block
    mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4))
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    hf_import.convert(src, out, mesh=mesh, scan_layers=True)
    with open(record, "w") as f:
        json.dump({"process": pid, "bytes_read": sum(reads), "blocks": len(reads)}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
