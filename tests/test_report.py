"""masklet report / show on tiny real output roots, local and on S3 (moto)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from report_helpers import ANNOTATED, BROKEN_ERROR, BROKEN_KEY, build_output

from masklet.cli import EXIT_OK, EXIT_USAGE, main
from masklet.io.outputs import read_shard
from masklet.io.video import FRAME_FOLDER_FPS, open_video
from masklet.report import write_report
from masklet.report.overlays import render

IMAGE = re.compile(r'<img src="data:(image/\w+);base64,([^"]+)" alt="([^"]*)">')


def images(page: str) -> dict[str, tuple[str, Image.Image]]:
    """alt -> (mime, decoded image) of every inlined image."""
    return {alt: (mime, Image.open(io.BytesIO(base64.b64decode(data)))) for mime, data, alt in IMAGE.findall(page)}


def funnel_rows(page: str) -> dict[str, int]:
    section = page.split("<h2>Filter funnel</h2>", 1)[1].split("</table>", 1)[0]
    return {stage: int(n) for stage, n in re.findall(r"<tr><td>([^<]+)</td><td class=num>(\d+)</td></tr>", section)}


@pytest.fixture(scope="module")
def local_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    base = tmp_path_factory.mktemp("report")
    root = str(base / "out")
    return root, build_output(root, str(base / "corpus"), write_video=False, missing_source=True)


def test_report_has_funnel_plots_errors_and_overlays(
    local_output: tuple[str, list], capsys: pytest.CaptureFixture
) -> None:
    root, records = local_output
    keys = sorted({m.video_key for m in records})  # all have 4 masklets: the 2 first keys are chosen, then KEY
    assert main(["report", root, "--videos", "2", "--key", keys[2], "--key", "broken video.mp4"]) == EXIT_OK
    path = capsys.readouterr().out.strip()
    assert path == f"{root}/report.html"
    page = Path(path).read_text()

    reasons = Counter(m.reject_reason.split(":")[0] for m in records if not m.kept)
    expected = {"produced": len(records), **{f"dropped: {r}": n for r, n in reasons.items()}}
    expected["kept"] = sum(m.kept for m in records)
    assert funnel_rows(page) == expected
    assert set(reasons) == {"low_stability", "too_small", "duplicate_of"}

    found = images(page)
    for alt in ("filter funnel", "throughput per shard"):
        assert found[alt][0] == "image/png" and found[alt][1].width > 300
    assert any(alt.startswith("histograms of stability") for alt in found)

    assert page.count("<section class=video") == 4
    assert f"the video failed: {BROKEN_ERROR}" in page.split(f'id="video-{BROKEN_KEY}"', 1)[1]
    # videos 0 and 1 decode from the source corpus; video 2 names a tar that is gone
    for key in keys[:2]:
        mime, animation = found[f"kept masklets of {key}"]
        assert mime == "image/webp" and animation.n_frames == len(ANNOTATED)
        assert found[f"dropped masklets of {key}"][0] == "image/png"
    assert f"kept masklets of {keys[2]}" not in found
    assert "frames unavailable: shard" in page and "gone.tar does not exist" in page

    for key in keys:  # every dropped masklet is listed with its reason in its video's section
        section = page.split(f'id="video-{key}"', 1)[1].split("</section>", 1)[0]
        for m in records:
            if m.video_key == key and not m.kept:
                assert f"<tr><td>{m.masklet_id}</td><td>{m.reject_reason}</td>" in section

    assert "Errors (1 videos)" in page and BROKEN_ERROR in page and "broken video.mp4" in page
    assert "<td>shard-000000</td><td class=num>4</td><td class=num>1</td>" in page  # throughput row
    assert "c0ffee" in page  # the job's config hash


def test_show_writes_a_page_or_the_animation(local_output: tuple[str, list], tmp_path: Path) -> None:
    root, records = local_output
    key = records[0].video_key
    assert main(["show", root, key, "--out", str(tmp_path / "one.html")]) == EXIT_OK
    page = (tmp_path / "one.html").read_text()
    assert page.count("<section class=video") == 1 and "low_stability" in page
    assert main(["show", root, key, "--out", str(tmp_path / "one.webp")]) == EXIT_OK
    with Image.open(tmp_path / "one.webp") as animation:
        assert animation.format == "WEBP" and animation.n_frames == len(ANNOTATED)


def test_bad_inputs_exit_2_naming_the_culprit(
    local_output: tuple[str, list], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = local_output
    assert main(["show", root, "no-such-video"]) == EXIT_USAGE
    assert "unknown video key 'no-such-video'" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{str(tmp_path)!r} is not a masklet output" in err
    assert main(["report", root, "--videos", "-1"]) == EXIT_USAGE
    assert "--videos must be >= 0" in capsys.readouterr().err
    assert main(["show", root, BROKEN_KEY, "--out", str(tmp_path / "x.webp")]) == EXIT_USAGE
    assert f"video {BROKEN_KEY!r} has no animation: the video failed: {BROKEN_ERROR}" in capsys.readouterr().err
    gif = tmp_path / "x.gif"
    assert main(["show", root, BROKEN_KEY, "--out", str(gif)]) == EXIT_USAGE
    assert f"--out {gif}: masklet show writes .html, .htm, .webp files only" in capsys.readouterr().err
    assert not gif.exists()


def test_report_of_an_s3_root_takes_frames_from_its_tar(s3_bucket: str, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/out"
    # write_video: frames come from wds/{shard}.tar, so even the video whose source is gone gets its overlay
    records = build_output(root, f"s3://{s3_bucket}/corpus", write_video=True, missing_source=True)
    out = tmp_path / "report.html"
    assert write_report(root, str(out), videos=8) == str(out)
    page = out.read_text()
    assert funnel_rows(page)["produced"] == len(records)
    found = images(page)
    for key in sorted({m.video_key for m in records}):
        assert found[f"kept masklets of {key}"][1].n_frames == len(ANNOTATED)
    assert "frames unavailable" not in page


@pytest.mark.parametrize("source_format", ["manifest", "frames"])
def test_overlay_frames_from_a_manifest_file_or_a_frame_folder(
    local_output: tuple[str, list], tmp_path: Path, source_format: str
) -> None:
    root, _ = local_output
    shard = read_shard(root, "shard-000000")
    video = shard.videos[0]
    tar_uri, member = video.source_uri.split("#")
    with tarfile.open(tar_uri) as tar:
        mp4 = tar.extractfile(member).read()
    if source_format == "manifest":
        (tmp_path / member).write_bytes(mp4)
        video = replace(video, source_uri=str(tmp_path / member))
    else:  # the same frames as JPEG files, numbered by frame index (SA-V layout, 24 fps by convention)
        folder = tmp_path / video.video_key
        folder.mkdir()
        with open_video(mp4) as stream:
            for frame in stream:
                Image.fromarray(frame.rgb).save(folder / f"{frame.index:05d}.jpg", quality=95)
        video = replace(video, source_uri=str(folder), fps=FRAME_FOLDER_FPS)
    masklets = [m for m in shard.masklets if m.video_key == video.video_key]

    overlay = render(root, "shard-000000", video, masklets, write_video=False, source_format=source_format)

    assert overlay.problem is None and overlay.frames == len(ANNOTATED)
    with Image.open(io.BytesIO(overlay.animation)) as animation:
        assert animation.n_frames == len(ANNOTATED)
    assert overlay.dropped_strip is not None


def test_report_of_a_cut_output_tar_names_the_break(tmp_path: Path) -> None:
    """The tar is cut inside its last video: the videos before it keep their overlays, that one says why it has none."""
    root = str(tmp_path / "out")
    records = build_output(root, str(tmp_path / "corpus"), write_video=True)
    tar_path = Path(root) / "wds" / "shard-000000.tar"
    with tarfile.open(tar_path) as tar:
        videos = [m for m in tar if m.name.endswith(".mp4")]
    cut = videos[-1].offset_data + videos[-1].size // 2
    tar_path.write_bytes(tar_path.read_bytes()[:cut])

    assert write_report(root, str(tmp_path / "report.html"), videos=8) == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    found = images(page)
    keys = sorted({m.video_key for m in records})
    last = videos[-1].name.split(".")[0]
    for key in keys:
        if key != last:
            assert found[f"kept masklets of {key}"][1].n_frames == len(ANNOTATED)
    assert f"kept masklets of {last}" not in found
    section = page.split(f'id="video-{last}"', 1)[1].split("</section>", 1)[0]
    assert "frames unavailable:" in section and "shard-000000.tar is truncated or corrupt at or after member" in section


def test_untrained_weights_are_a_warning_at_the_top(local_output: tuple[str, list], tmp_path: Path) -> None:
    root, _ = local_output
    job = json.loads(Path(root, "job.json").read_text())
    assert "untrained weights" not in Path(write_report(root, str(tmp_path / "plain.html"))).read_text()
    random_root = tmp_path / "random"
    shutil.copytree(root, random_root)
    job["config"]["model"] = {"name": "sam2.1_hiera_t", "init": "random"}
    (random_root / "job.json").write_text(json.dumps(job))
    page = Path(write_report(str(random_root), str(tmp_path / "random.html"))).read_text()
    assert page.index("Warning: untrained weights") < page.index("<h2>Job</h2>")
