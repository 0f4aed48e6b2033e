"""`masklet train`: config checks, simulated prompts, losses, a differentiable unroll, checkpoints
in the official layout, exact resume, and a run through S3 (moto)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sam2 import TINY

from masklet.cli import main
from masklet.config import ConfigError
from masklet.io import rle
from masklet.model import build_model
from masklet.model.sam2 import SegmentOutput
from masklet.pipelines.model_loading import load_weights
from masklet.synth.corpus import write_corpus
from masklet.train import clicks
from masklet.train.config import ClipConfig, LossConfig, PromptConfig, TrainConfig, load_train_config
from masklet.train.data import ClipSampler, NoTrainingData, TrainingVideo, load_videos
from masklet.train.losses import frame_loss
from masklet.train.trainer import param_groups, train
from masklet.train.unroll import unroll

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = dataclasses.replace(TINY, image_size=64, window_spec=(4, 4, 4, 2))


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC, apply_postprocessing=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), videos=3, per_shard=2, seed=5, width=64, height=48, frames=10, fps=24)
    return str(root / "shard-*.tar")


def config(corpus: str, out: str, **sections: dict) -> TrainConfig:
    data = {
        "data": {"uri": corpus, "annotation": "gt.json"},
        "model": {"image_size": 64},
        "clip": {"frames": 4, "max_stride": 2, "max_objects": 2},
        "optim": {"steps": 4, "warmup_steps": 1},
        "output": {"uri": out, "checkpoint_every": 2, "log_every": 2},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return TrainConfig.model_validate(data)


# ---------------------------------------------------------------- config


def test_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data: {uri: x.tar}\noutput: {uri: out}\nprompts: {p_mask: 0.9}\n")
    with pytest.raises(ConfigError, match=r"prompts: p_mask \+ p_click \+ p_box must be 1"):
        load_train_config(str(path))
    assert main(["train", str(path), "optim.stepz=3"]) == 2
    assert "optim.stepz: unknown key" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model: .*unknown model 'sam3'"):
        load_train_config(str(path), ["prompts.p_mask=0.5", "model.name=sam3"])


# ---------------------------------------------------------------- prompts


def test_clicks_and_boxes_come_from_the_masks() -> None:
    rng = np.random.default_rng(0)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:10, 6:20] = True
    masks[1, 20:30, 1:5] = True
    coords, labels = clicks.positive_clicks(masks, rng)
    for m, (x, y) in zip(masks, coords[:, 0].long(), strict=True):
        assert m[y, x]
    assert labels.tolist() == [[1], [1]]
    assert clicks.noisy_boxes(masks, rng, 0.0).tolist() == [[6, 4, 20, 10], [1, 20, 5, 30]]
    noisy = clicks.noisy_boxes(masks, rng, 0.1)
    assert (noisy - torch.tensor([[6, 4, 20, 10], [1, 20, 5, 30]])).abs().max() <= 1.4 + 1e-5

    pred = masks.clone()
    pred[0] = False  # object 0 missed entirely: the click must be positive, inside it
    pred[1, 0:5, 25:30] = True  # object 1 leaks onto background: the click must be negative, on the leak
    coords, labels = clicks.corrective_clicks(pred, masks, rng)
    (x0, y0), (x1, y1) = coords[:, 0].long().tolist()
    assert labels.tolist() == [[1], [0]]
    assert masks[0, y0, x0] and pred[1, y1, x1] and not masks[1, y1, x1]


# ---------------------------------------------------------------- losses


def _output(multimask_logits: torch.Tensor, ious: torch.Tensor, score: float) -> SegmentOutput:
    n = multimask_logits.shape[0]
    return SegmentOutput(
        multimask_logits, multimask_logits, ious, multimask_logits[:, :1], multimask_logits[:, :1],
        torch.zeros(n, 8), torch.full((n, 1), score),
    )  # fmt: skip


def test_loss_supervises_the_best_mask_and_the_real_iou() -> None:
    gt = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    gt[..., 4:12, 4:12] = True
    right = torch.where(gt, 20.0, -20.0).float()
    wrong = -right
    logits = torch.cat([wrong, right, wrong], dim=1)
    good = frame_loss(_output(logits, torch.tensor([[0.0, 1.0, 0.0]]), 20.0), gt, LossConfig())
    assert good["focal"] < 1e-6 and good["dice"] < 1e-3 and good["iou"] < 1e-6 and good["object_score"] < 1e-6
    bad_iou = frame_loss(_output(logits, torch.tensor([[1.0, 0.0, 1.0]]), 20.0), gt, LossConfig())
    assert bad_iou["iou"] == pytest.approx(1.0) and bad_iou["focal"] < 1e-6  # mask loss: still the best mask
    # an absent object: no mask or IoU loss, only presence
    absent = frame_loss(_output(logits, torch.tensor([[1.0, 0.0, 1.0]]), 20.0), torch.zeros_like(gt), LossConfig())
    assert absent["focal"] == 0 and absent["dice"] == 0 and absent["iou"] == 0
    assert absent["object_score"] == pytest.approx(20.0, abs=1e-3)


def test_sampler_prefers_several_objects_on_the_first_frame(corpus: str) -> None:
    c = config(corpus, "unused", clip={"min_objects": 2, "max_objects": 3})
    videos = load_videos(c.data, SPEC.image_size)
    assert len(videos) == 3
    sampler = ClipSampler(videos, c.clip, SPEC.image_size)
    clips = [sampler.sample(np.random.default_rng(i)) for i in range(20)]
    assert len({clip.key for clip in clips}) > 1
    assert all(clip.masks[0].flatten(1).any(1).all() for clip in clips)  # every object is on the first frame
    assert all(clip.masks.shape[1] >= 2 for clip in clips)


def test_sampler_skips_objects_the_resize_makes_vanish() -> None:
    """A 1-pixel object of a 256x256 video has no pixel at 64: no prompt could be drawn from it."""
    big, speck = np.zeros((256, 256), bool), np.zeros((256, 256), bool)
    big[64:192, 64:192], speck[10, 10] = True, True
    masklet = [rle.encode_batch(np.stack([speck, big])) for _ in range(4)]
    video = TrainingVideo("v", torch.zeros(4, 3, 64, 64, dtype=torch.uint8), masklet)
    c = ClipConfig(frames=2, max_objects=2, min_objects=2)
    clips = [ClipSampler([video], c, 64).sample(np.random.default_rng(i)) for i in range(5)]
    assert all(clip.masks.shape[1] == 1 and clip.masks[0, 0].any() for clip in clips)
    with pytest.raises(NoTrainingData, match="no visible object"):
        ClipSampler([TrainingVideo("v", video.frames, [m[:1] for m in masklet])], c, 64).sample(
            np.random.default_rng(0)
        )


def test_sampler_keeps_strides_in_range() -> None:
    """Frame i is filled with the value 10 * i, so the step between a clip's frames gives its stride."""
    big = np.zeros((64, 64), bool)
    big[16:48, 16:48] = True
    frames = (10 * torch.arange(24, dtype=torch.uint8)).view(24, 1, 1, 1).expand(24, 3, 64, 64).contiguous()
    video = TrainingVideo("v", frames, [rle.encode_batch(big[None]) for _ in range(24)])

    def steps(**strides: int) -> list[float]:
        sampler = ClipSampler([video], ClipConfig(frames=4, max_objects=1, min_objects=1, **strides), 64)
        clips = [sampler.sample(np.random.default_rng(i)) for i in range(30)]
        return [float(clip.frames[1, 0, 0, 0] - clip.frames[0, 0, 0, 0]) for clip in clips]

    unit = steps(min_stride=1, max_stride=1)[0]
    assert set(np.round(np.array(steps(min_stride=3, max_stride=4)) / unit, 3)) == {3.0, 4.0}
    with pytest.raises(ValueError, match="min_stride 5 is above max_stride 4"):
        ClipConfig(min_stride=5, max_stride=4)


def test_param_groups_slow_the_encoder_and_decay_matrices_only(corpus: str) -> None:
    model = tiny()
    c = config(corpus, "unused", optim={"lr": 1e-3, "encoder_lr_ratio": 0.05, "weight_decay": 0.1})
    groups = param_groups(model, c)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    encoder = {id(p) for p in model.image_encoder.parameters()}
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lr[id(p)] == pytest.approx(5e-5 if id(p) in encoder else 1e-3), name
        assert decay[id(p)] == (0.1 if p.ndim > 1 and "pos_embed" not in name else 0.0), name


# ---------------------------------------------------------------- unroll


@pytest.mark.parametrize("kind", ["mask", "click", "box"])
def test_unroll_is_differentiable_through_memory(corpus: str, kind: str) -> None:
    model = tiny().train()
    c = config(corpus, "unused")
    videos = load_videos(c.data, SPEC.image_size)
    clip = ClipSampler(videos, c.clip, SPEC.image_size).sample(np.random.default_rng(1))
    assert clip.frames.shape == (4, 3, 64, 64) and clip.masks.shape[:2][0] == 4
    prompts = PromptConfig(
        p_mask=float(kind == "mask"), p_click=float(kind == "click"), p_box=float(kind == "box"), p_correct_later=1.0
    )
    outputs = unroll(model, clip.frames, clip.masks, prompts, np.random.default_rng(2))
    first = [o for t, o in outputs if t == 0]
    # a mask is its own output; a click or box is decoded, then corrected once
    assert len(first) == (0 if kind == "mask" else 1 + prompts.first_frame_corrections)
    # every later frame is tracked; one of them also corrected
    assert len(outputs) - len(first) == 3 + 1
    loss = sum(frame_loss(o, clip.masks[t][:, None], c.loss)["total"] for t, o in outputs)
    loss.backward()
    for module in (model.memory_encoder, model.memory_attention, model.image_encoder, model.sam_mask_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), module


# ---------------------------------------------------------------- training runs


def test_train_writes_official_layout_and_resumes_exactly(corpus: str, tmp_path: Path) -> None:
    straight = train(config(corpus, str(tmp_path / "a")), model=tiny(), on_log=lambda _: None)
    assert straight.steps == 4 and straight.resumed_from == 0
    reloaded = build_model(SPEC)
    load_weights(reloaded, straight.checkpoint)  # strict: every key, official layout
    saved = torch.load(straight.checkpoint, weights_only=True)
    assert set(saved) == {"model", "masklet"} and saved["masklet"]["step"] == 4
    assert any(
        (p != q).any() for p, q in zip(reloaded.state_dict().values(), tiny().state_dict().values(), strict=True)
    )

    # killed after the checkpoint of step 2, then run again: the same weights as straight through
    def killed_at_step_2(line: str) -> None:
        if line.startswith("step 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(corpus, str(tmp_path / "b")), model=tiny(), on_log=killed_at_step_2)
    logs: list[str] = []
    resumed = train(config(corpus, str(tmp_path / "b")), model=tiny(), on_log=logs.append)
    assert resumed.resumed_from == 2
    assert any("resuming from" in line and "at step 2" in line for line in logs)
    a = torch.load(straight.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_loss(corpus: str, tmp_path: Path) -> None:
    c = config(corpus, str(tmp_path), optim={"steps": 40, "lr": 3e-3, "warmup_steps": 5}, output={"log_every": 10})
    result = train(c, model=tiny(), on_log=lambda _: None)
    first = train(
        config(corpus, str(tmp_path / "first"), optim={"steps": 10, "lr": 3e-3, "warmup_steps": 5}),
        model=tiny(),
        on_log=lambda _: None,
    )
    assert result.losses["total"] < 0.7 * first.losses["total"], (first.losses, result.losses)


def test_single_frame_clips_train_promptable_segmentation(corpus: str, tmp_path: Path) -> None:
    """Stage one of a SAM -> SAM 2 schedule: clips of one frame, prompted by clicks and boxes only."""
    c = config(corpus, str(tmp_path), clip={"frames": 1}, prompts={"p_mask": 0.0, "p_click": 0.5, "p_box": 0.5})
    videos = load_videos(c.data, SPEC.image_size)
    clip = ClipSampler(videos, c.clip, SPEC.image_size).sample(np.random.default_rng(0))
    assert clip.frames.shape[0] == 1
    outputs = unroll(tiny().train(), clip.frames, clip.masks, c.prompts, np.random.default_rng(0))
    assert [t for t, _ in outputs] == [0] * (1 + c.prompts.first_frame_corrections)
    assert train(c, model=tiny(), on_log=lambda _: None).steps == 4


def test_train_to_s3_and_resume_from_it(corpus: str, s3_bucket: str) -> None:
    out = f"s3://{s3_bucket}/runs/demo"
    train(config(corpus, out, optim={"steps": 2}), model=tiny(), on_log=lambda _: None)
    result = train(config(corpus, out, optim={"steps": 3}), model=tiny(), on_log=lambda _: None)
    assert result.resumed_from == 2 and result.checkpoint == f"{out}/model.pt"
    load_weights(build_model(SPEC), result.checkpoint)


def test_no_usable_video_is_a_clear_error(corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train.yaml"
    # masklet synth's {key}.json is scene metadata, not SA-V: every annotation is refused, with the reason
    path.write_text(f"data: {{uri: '{corpus}', annotation: json}}\noutput: {{uri: '{tmp_path / 'out'}'}}\n")
    assert main(["train", str(path)]) == 2
    assert "no usable annotated video" in capsys.readouterr().err
