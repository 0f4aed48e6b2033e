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

import fsspec
import numpy as np
import pytest
from PIL import Image
from report_helpers import ANNOTATED, BROKEN_ERROR, BROKEN_KEY, DOUBTFUL, FILTERS, build_output

from masklet.cli import EXIT_OK, EXIT_USAGE, main
from masklet.io import rle
from masklet.io.outputs import read_shard
from masklet.io.schema import MaskletRecord
from masklet.io.video import FRAME_FOLDER_FPS, open_video
from masklet.pipelines.doubt import Masklet
from masklet.report import write_report
from masklet.report.build import choose_videos
from masklet.report.data import load_output
from masklet.report.lookfirst import focus_frame, largest_frame, rankings, videos_to_show
from masklet.report.overlays import colors, label_points, masks_on, render
from masklet.report.stats import reason_detail, threshold_lines
from masklet.report.viewer import SCRIPT

IMAGE = re.compile(r'<img src="data:(image/\w+);base64,([^"]+)" alt="([^"]*)">')
VIEW = re.compile(
    r'<div class=viewer tabindex=0 data-video="([^"]+)".*?<script type="application/json" id="[^"]+">'
    r"(.*?)</script>",
    re.S,
)


def images(page: str) -> dict[str, tuple[str, Image.Image]]:
    """alt -> (mime, decoded image) of every inlined image."""
    return {alt: (mime, Image.open(io.BytesIO(base64.b64decode(data)))) for mime, data, alt in IMAGE.findall(page)}


def views(page: str) -> dict[str, dict]:
    """video key -> the data of its viewer."""
    return {key: json.loads(data) for key, data in VIEW.findall(page)}


def section(page: str, key: str) -> str:
    return page.split(f'id="video-{key}"', 1)[1].split("</section>", 1)[0]


def funnel_rows(page: str) -> dict[str, int]:
    part = page.split("<h2 id=funnel>Filter funnel</h2>", 1)[1].split("</table>", 1)[0]
    return {stage: int(n) for stage, n in re.findall(r"<tr><td>([^<]+)</td><td class=num>(\d+)</td></tr>", part)}


def check_view(data: dict, records: list[MaskletRecord]) -> None:
    """A viewer's data: every annotated frame once, as WebP at the video's size; every masklet's masks."""
    assert data["frames"] == ANNOTATED and len(data["images"]) == len(ANNOTATED)
    for uri in data["images"]:
        mime, _, payload = uri.partition(";base64,")
        assert mime == "data:image/webp"
        with Image.open(io.BytesIO(base64.b64decode(payload))) as frame:
            assert frame.size == (data["width"], data["height"])
    by_id = {m["id"]: m for m in data["masklets"]}
    assert set(by_id) == {m.masklet_id for m in records}
    for m in records:
        assert by_id[m.masklet_id]["rle"] == m.rle  # the stored strings, the video being no larger than WIDTH
        assert by_id[m.masklet_id]["kept"] == m.kept


@pytest.fixture(scope="module")
def local_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    base = tmp_path_factory.mktemp("report")
    root = str(base / "out")
    return root, build_output(root, str(base / "corpus"), write_video=False, missing_source=True)


def test_report_has_funnel_plots_errors_and_viewers(
    local_output: tuple[str, list], capsys: pytest.CaptureFixture
) -> None:
    root, records = local_output
    keys = sorted({m.video_key for m in records})
    # 2 videos: the one with the most doubtful masklet (keys[1]), then the next by the lists (keys[0]); then KEY
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
    assert set(found) == {
        "filter funnel",
        "throughput per shard",
        "histograms of stability, predicted IoU, length, area, edits, flicker",
    }
    for mime, plot in found.values():
        assert mime == "image/png" and plot.width > 300
    assert (
        "Dashed lines: the thresholds that produced this output, from the job (job.json config.filters): "
        "min_stability_mean = 0.6, min_visible_frames = 1." in page
    )

    # sections in the order asked for; the broken video says why, the one whose source tar is gone too
    assert [k for k in re.findall(r'<section class=video id="video-([^"]+)"', page)] == [
        keys[2],
        BROKEN_KEY,
        keys[1],
        keys[0],
    ]
    assert f"the video failed: {BROKEN_ERROR}" in section(page, BROKEN_KEY)
    assert "frames unavailable: shard" in section(page, keys[2]) and "gone.tar does not exist" in page
    shown = views(page)
    assert set(shown) == {keys[0], keys[1]}  # each frame of each viewer inlined once, and nothing else
    assert page.count("data:image/webp") == 2 * len(ANNOTATED)
    for key in keys[:2]:
        check_view(shown[key], [m for m in records if m.video_key == key])

    for key in keys:  # every masklet is listed in its video's section, dropped ones with their reason
        part = section(page, key)
        for m in records:
            if m.video_key == key:
                status = "kept" if m.kept else f"dropped: {m.reject_reason}" if key != keys[2] else m.reject_reason
                assert f"{m.masklet_id}</td><td>{status}" in part, (key, m.masklet_id)
    tiles = re.findall(r'<figure class=tile data-masklet="(\d+)" data-position="(\d+)"', section(page, keys[1]))
    assert [int(t[0]) for t in tiles] == [m.masklet_id for m in records if m.video_key == keys[1] and not m.kept]
    assert "low_stability (stability 0.500 &lt; min_stability_mean 0.6)" in section(page, keys[1])
    assert "duplicate_of:0 (tube IoU with masklet 0 &gt;= dedup_iou 0.8)" in section(page, keys[1])

    # where to look first: the doubtful masklet heads both score lists, linked to its video's worst frame
    look = page.split("<h2 id=look-first>", 1)[1].split("<h2", 1)[0]
    first = re.findall(
        r'<a class=jump href="#video-([^"]+)" data-video="[^"]+" data-frame="(\d+)" '
        r'data-masklet="(\d+)">',
        look,
    )
    assert first[0] == (keys[1], str(ANNOTATED[0]), str(DOUBTFUL))
    assert "stability 0.700" in look and "pred IoU 0.600" in look

    assert "Errors (1 videos)" in page and BROKEN_ERROR in page and "broken video.mp4" in page
    assert "<td>shard-000000</td><td class=num>4</td><td class=num>1</td>" in page  # throughput row
    assert "c0ffee" in page  # the job's config hash
    assert "</script" not in SCRIPT


def test_show_writes_a_page_or_the_animation(local_output: tuple[str, list], tmp_path: Path) -> None:
    root, records = local_output
    key = records[0].video_key
    assert main(["show", root, key, "--out", str(tmp_path / "one.html")]) == EXIT_OK
    page = (tmp_path / "one.html").read_text()
    assert page.count("<section class=video") == 1 and "low_stability" in page
    check_view(views(page)[key], [m for m in records if m.video_key == key])
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
    # write_video: frames come from wds/{shard}.tar, so even the video whose source is gone gets its viewer
    records = build_output(root, f"s3://{s3_bucket}/corpus", write_video=True, missing_source=True)
    out = tmp_path / "report.html"
    assert write_report(root, str(out), videos=8) == str(out)
    page = out.read_text()
    assert funnel_rows(page)["produced"] == len(records)
    shown = views(page)
    for key in sorted({m.video_key for m in records}):
        check_view(shown[key], [m for m in records if m.video_key == key])
    assert "frames unavailable" not in page


@pytest.mark.parametrize("source_format", ["manifest", "frames"])
def test_viewer_frames_from_a_manifest_file_or_a_frame_folder(
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
    assert overlay.view.frame_indices == ANNOTATED
    assert overlay.view.masks == {m.masklet_id: m.rle for m in masklets}


def test_report_of_a_cut_output_tar_names_the_break(tmp_path: Path) -> None:
    """The tar is cut inside its last video: the videos before it keep their viewers, that one says why it has none."""
    root = str(tmp_path / "out")
    records = build_output(root, str(tmp_path / "corpus"), write_video=True)
    tar_path = Path(root) / "wds" / "shard-000000.tar"
    with tarfile.open(tar_path) as tar:
        videos = [m for m in tar if m.name.endswith(".mp4")]
    cut = videos[-1].offset_data + videos[-1].size // 2
    tar_path.write_bytes(tar_path.read_bytes()[:cut])

    assert write_report(root, str(tmp_path / "report.html"), videos=8) == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    last = videos[-1].name.split(".")[0]
    assert set(views(page)) == {m.video_key for m in records} - {last}
    part = section(page, last)
    assert "frames unavailable:" in part and "shard-000000.tar is truncated or corrupt at or after member" in part


def test_untrained_weights_are_a_warning_at_the_top(local_output: tuple[str, list], tmp_path: Path) -> None:
    root, _ = local_output
    job = json.loads(Path(root, "job.json").read_text())
    assert "untrained weights" not in Path(write_report(root, str(tmp_path / "plain.html"))).read_text()
    random_root = tmp_path / "random"
    shutil.copytree(root, random_root)
    job["config"]["model"] = {"name": "sam2.1_hiera_t", "init": "random"}
    (random_root / "job.json").write_text(json.dumps(job))
    page = Path(write_report(str(random_root), str(tmp_path / "random.html"))).read_text()
    assert page.index("Warning: untrained weights") < page.index("<h2 id=job>Job</h2>")


def test_secrets_in_an_older_job_json_are_not_shown(
    local_output: tuple[str, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(fsspec.config.conf.get("s3", {})))  # the report configures s3
    root = tmp_path / "older"
    shutil.copytree(local_output[0], root)
    job = json.loads((root / "job.json").read_text())
    job["config"]["storage"] = {"s3": {"key": "AKIAOLDKEY", "secret": "hunter2", "endpoint_url": "http://u:pw-Zq9x@s3"}}
    (root / "job.json").write_text(json.dumps(job))
    page = Path(write_report(str(root), str(tmp_path / "report.html"))).read_text()
    assert "&lt;redacted&gt;" in page and not any(s in page for s in ("AKIAOLDKEY", "hunter2", "pw-Zq9x"))


def test_videos_shown_are_those_of_the_most_doubtful_masklets(local_output: tuple[str, list]) -> None:
    root, records = local_output
    keys = sorted({m.video_key for m in records})
    summary = load_output(root)
    ranked = rankings(summary.masklets)
    assert [(m.video_key, m.masklet_id) for m in ranked["stability"][:1]] == [(keys[1], DOUBTFUL)]
    assert all(m.kept for by in ranked for m in ranked[by])
    assert choose_videos(summary, 1, [], ranked) == [keys[1]]
    assert choose_videos(summary, 1, [keys[2]], ranked) == [keys[2], keys[1]]
    assert choose_videos(summary, 8, [], ranked) == [keys[1], keys[0], keys[2]]  # then the rest: all ok videos
    assert choose_videos(summary, 0, [], ranked) == []

    def m(video: str, mid: int, **values: object) -> Masklet:
        base = {
            "kept": True,
            "stability_mean": 0.9,
            "pred_iou_mean": 0.9,
            "edit_count": 0,
            "visibility_changes": 0,
            "num_visible": 10,
            "first_frame": 0,
        }
        return Masklet("s", video, mid, **{**base, **values})

    lists = {
        "stability": [m("a", 1), m("b", 1)],
        "pred_iou": [m("c", 1)],
        "edits": [],
        "flicker": [m("a", 2)],
        "short": [m("d", 1), m("e", 1)],
    }
    assert videos_to_show(lists, 3) == ["a", "c", "d"]  # the first of each list, then the second of each
    assert videos_to_show(lists, 9) == ["a", "c", "d", "b", "e"]


def test_a_link_opens_the_frame_to_check() -> None:
    frames = [0, 2, 4, 6, 8]
    m = MaskletRecord.from_frames(
        "v",
        1,
        source="auto",
        frame_indices=frames,
        rles=[rle.encode(np.ones((4, 4), bool) if a else np.zeros((4, 4), bool)) for a in (1, 1, 0, 1, 1)],
        pred_iou=[0.9, 0.5, 0.0, 0.8, 0.9],
        stability=[0.9, 0.9, 0.0, 0.4, 0.9],
        object_score=[1, 1, -1, 1, 1],
    )
    assert focus_frame(m, "stability", frames) == 6
    assert focus_frame(m, "pred_iou", frames) == 2
    assert focus_frame(m, "flicker", frames) == 4  # where it vanishes
    assert focus_frame(m, "short", frames) == 0
    assert focus_frame(m, "stability", [0, 2]) == 0  # only the frames shown count
    assert focus_frame(m, "stability", [10]) is None
    assert largest_frame(m, frames) == 0 and largest_frame(m, [4]) is None


def test_labels_sit_inside_their_masks_and_never_overlap() -> None:
    """Nested masks (whose centroids coincide) and a mask too small for a label: every label that is
    placed lies on its own mask, clear of the others; one with no room is left to the list."""
    h, w = 120, 160
    ys, xs = np.mgrid[0:h, 0:w]
    outer = (ys - 60) ** 2 + (xs - 80) ** 2 < 50**2
    inner = (ys - 60) ** 2 + (xs - 80) ** 2 < 20**2
    tiny = (ys >= 5) & (ys < 9) & (xs >= 5) & (xs < 9)
    placed = label_points([(6, outer), (7, inner), (8, tiny)], (18, 28))
    assert set(placed) == {6, 7}
    (x6, y6), (x7, y7) = placed[6], placed[7]
    assert outer[y6, x6] and inner[y7, x7]
    assert abs(x6 - x7) >= 28 or abs(y6 - y7) >= 18


def test_colours_are_distinct_within_a_video() -> None:
    palette = colors(range(1, 25))
    assert len(set(palette.values())) == 24 and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in palette.values())
    assert colors([7, 3]) == {3: colors([3, 7])[3], 7: colors([3, 7])[7]}


def test_masks_of_a_large_video_are_stored_at_the_frame_size() -> None:
    big = np.zeros((720, 960), bool)
    big[100:400, 200:700] = True
    m = MaskletRecord.from_frames(
        "v",
        1,
        source="auto",
        frame_indices=[0, 4],
        rles=[rle.encode(big), rle.encode(np.zeros_like(big))],
        pred_iou=[0.9, 0.0],
        stability=[0.9, 0.0],
        object_score=[1.0, -1.0],
    )
    counts = masks_on(m, [0, 2, 4], (360, 480))
    assert counts[1:] == ["", ""]
    small = rle.decode({"size": [360, 480], "counts": counts[0]})
    assert np.array_equal(small, big[::2, ::2])


def test_threshold_lines_and_reasons_name_the_filter() -> None:
    lines = threshold_lines({**FILTERS, "min_area_rel": 0.01, "max_area_rel": 1.0, "max_visibility_changes": 2})
    assert lines == {
        "stability_mean": [(0.6, "min_stability_mean = 0.6")],
        "num_visible": [(0.5, "min_visible_frames = 1")],
        "area_rel_mean": [(0.01, "min_area_rel = 0.01")],
        "visibility_changes": [(2.5, "max_visibility_changes = 2")],
    }
    assert threshold_lines({"min_visible_frames": 0, "dedup_iou": None}) == {}
    assert threshold_lines({}) == {"num_visible": [(0.5, "min_visible_frames = 1")]}  # the defaults
    assert threshold_lines(None) == {}  # no job.json: nothing is known
    row = {"reject_reason": "too_few_visible_frames", "num_visible": 2}
    assert (
        reason_detail(row, {"min_visible_frames": 3})
        == "too_few_visible_frames (visible frames 2 < min_visible_frames 3)"
    )
    assert (
        reason_detail({"reject_reason": "low_pred_iou", "pred_iou_mean": 0.51}, None)
        == "low_pred_iou (predicted IoU 0.510)"
    )
    assert reason_detail({"reject_reason": "something_new"}, FILTERS) == "something_new"


def test_a_filter_output_draws_the_thresholds_that_made_it(local_output: tuple[str, list], tmp_path: Path) -> None:
    root, _ = local_output
    out = str(tmp_path / "strict")
    assert main(["filter", root, out, "min_stability_mean=0.8", "max_visibility_changes=1"]) == EXIT_OK
    page = Path(write_report(out, str(tmp_path / "strict.html"), videos=0)).read_text()
    assert "A derived output" in page and "<code>masklet filter</code> of" in page
    assert (
        f"Dashed lines: the thresholds that produced this output, from <code>masklet filter</code> of {root}: "
        "min_stability_mean = 0.8, min_visible_frames = 1, max_visibility_changes = 1." in page
    )
    assert "not shown here: add --key" in page  # no viewer asked for: the lists say how to get one
