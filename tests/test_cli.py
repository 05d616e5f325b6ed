"""The README's two commands stay true: the main job runs end to end, and CI runs the README's test command."""

import json
import re
from pathlib import Path

import numpy as np

from dreamjax import cli

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _readme_commands()[:2]
    assert len(cmds) == 2 and cmds[0].endswith("dreamjax demo") and "pytest" in cmds[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci.splitlines(), "the README's test command must be the one .ci/run runs"


def test_smoke_demo_runs_end_to_end(tmp_path, capsys):
    """``dreamjax demo --smoke``: the inference-only path (tokenizer, processor, template, checkpoint, generate);
    the main job itself (`dreamjax demo`, Meta-World) is tests/test_demo.py."""
    assert cli.main(["demo", "--smoke", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    # 224x160 is below the Dream-VLA minimum of 50176 px: scaled by sqrt(50176/35840) and rounded up to
    # multiples of 28 -> 196x280 -> a (1, 14, 20) grid of 14-px patches, 70 LLM tokens
    assert summary["image_grid"] == [[1, 14, 20]]
    assert summary["logits_shape"][1] == summary["prompt_tokens"]
    assert (tmp_path / "checkpoint" / "params").is_dir() and (tmp_path / "scene.png").is_file()
    assert (tmp_path / "checkpoint" / "assets" / "spm.model").is_file(), "the tokenizer travels with the checkpoint"

    assert summary["generated_canvas"] == [1, summary["prompt_tokens"] + 16]
    assert isinstance(summary["generated"], str)

    # the checkpoint the demo wrote answers `dreamjax forward` and `dreamjax generate`
    assert cli.main(["forward", "--model", str(tmp_path / "checkpoint"), "--image", str(tmp_path / "scene.png"),
                     "--prompt", "what colour is the square", "--top", "3"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.strip()]
    assert len(rows) == 3 and all(np.isfinite(float(r.split()[1])) for r in rows)
    args = ["generate", "--model", str(tmp_path / "checkpoint"), "--image", str(tmp_path / "scene.png"),
            "--prompt", "what colour is the square", "--max-new-tokens", "8", "--steps", "4"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0 and capsys.readouterr().out == first, "temperature 0 generation is deterministic"


def test_info_counts_7b_params(capsys):
    assert cli.main(["info", "--config", "configs/dream_vl_7b.py"]) == 0
    out = capsys.readouterr().out
    assert "8,317,072,896" in out


def test_bad_override_is_a_clear_error(capsys, caplog):
    assert cli.main(["info", "--config", "dream_vl_7b", "--config.model.no_such_field=1"]) == 2
    assert "no_such_field" in caplog.text
