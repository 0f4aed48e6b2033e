import subprocess
import sys
from pathlib import Path

import pytest

from masklet.cli import main

ROOT = Path(__file__).parents[1]


def test_config_command_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(ROOT / "configs/demo.yaml"), "workers.count=2", "model.name=sam2_hiera_s"]) == 0
    out = capsys.readouterr().out
    assert "name: sam2_hiera_s" in out
    assert "count: 2" in out
    assert "pred_iou_thresh: 0.8" in out
    assert "# config hash: " in out


def test_config_error_is_one_clear_message_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(ROOT / "configs/demo.yaml"), "workers.count=-1"]) == 2
    err = capsys.readouterr().err
    assert "workers.count: Input should be greater than or equal to 1 (got -1)" in err
    assert "Traceback" not in err


def test_console_script_is_installed() -> None:
    """The `masklet` entry point of pyproject.toml, run the way users run it."""
    masklet = Path(sys.executable).parent / "masklet"
    result = subprocess.run([str(masklet), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("masklet ")
