import subprocess
import sys
from pathlib import Path

import pytest

from masklet.cli import main

ROOT = Path(__file__).parents[1]


def test_config_command_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(ROOT / "configs/demo.yaml"), "workers.count=2", "model.name=sam2_hiera_s",
                 "model.checkpoint=official"]) == 0
    out = capsys.readouterr().out
    assert "name: sam2_hiera_s" in out and "checkpoint: official" in out
    assert "count: 2" in out
    assert "box_nms_thresh: 0.7" in out  # a default the file does not set
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


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--frames", "0"], "frames must be an integer >= 1, got 0"),
        (["--width", "-4"], "width must be an integer >= 2, got -4"),
        (["--fps", "0"], "fps must be a positive number"),
    ],
)
def test_synth_bad_arguments_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    out = tmp_path / "corpus"
    assert main(["synth", str(out), "--videos", "2", "--per-shard", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert not out.exists()


def test_synth_to_an_unwritable_uri_fails_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["synth", str(blocker / "corpus"), "--videos", "1", "--per-shard", "1"]) == 2
    assert "cannot create output directory" in capsys.readouterr().err


def test_synth_writes_shards_to_s3(s3_bucket: str, tmp_path: Path) -> None:
    import fsspec
    import webdataset as wds

    uri = f"s3://{s3_bucket}/corpus"
    args = ["synth", uri, "--videos", "3", "--per-shard", "2", "--width", "64", "--height", "48", "--frames", "6"]
    assert main(args) == 0
    fs = fsspec.filesystem("s3")
    assert sorted(fs.ls(f"{s3_bucket}/corpus")) == [f"{s3_bucket}/corpus/shard-00000{i}.tar" for i in (0, 1)]
    local = tmp_path / "shard.tar"
    fs.get_file(f"{s3_bucket}/corpus/shard-000001.tar", str(local))
    samples = list(wds.WebDataset(str(local), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["synth-000002"]
    assert {"mp4", "json", "gt.json"} <= samples[0].keys()


def test_a_misspelt_command_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["rnu", "configs/demo.yaml"])
    assert exit_info.value.code == 2
    assert "unknown command 'rnu' (did you mean 'run'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["zzzz"])
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "submit", "eval", "train"])
def test_an_official_preset_without_weights_exits_2_before_any_work(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels (or a fine-tune) from untrained weights would be noise: refused unless model.init=random."""
    inputs, key = ("data", "model.init_checkpoint") if command == "train" else ("source", "model.checkpoint")
    text = f"{inputs}: {{uri: {tmp_path}/in/*.tar}}\nmodel: {{name: sam2.1_hiera_s}}\noutput: {{uri: {tmp_path}/out}}\n"
    (tmp_path / "c.yaml").write_text(text)
    extra = ["--dry-run", "--address", "http://127.0.0.1:9"] if command == "submit" else []
    assert main([command, str(tmp_path / "c.yaml"), *extra]) == 2
    err = capsys.readouterr().err
    assert f"sam2.1_hiera_s has no weights: set {key} to 'official'" in err and "init=random" in err
    assert not (tmp_path / "out").exists()
