"""`masklet train`: fit masklet's SAM 2 model to annotated clips, checkpointing so a run can resume.

One step is one clip (all its sampled objects in one batch). Randomness is drawn from a generator
seeded by (seed, step), so a resumed run samples exactly the clips and prompts an uninterrupted one
would. `last.pt` carries the optimizer and the step; `model.pt`, written at the end, is the model
alone. Both are the official layout (`{"model": state_dict, ...}`), so `load_weights` and the
official SAM 2 code read them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
import numpy as np
import torch

from masklet.config import redacted
from masklet.io import storage
from masklet.io.checkpoint_files import save_checkpoint
from masklet.model.checkpoint import CheckpointError, load_state_dict
from masklet.model.device import resolve_device
from masklet.model.sam2 import SAM2Model, build_model
from masklet.pipelines.model_loading import load_weights
from masklet.train.config import TrainConfig
from masklet.train.data import ClipSampler, load_videos
from masklet.train.losses import frame_loss
from masklet.train.unroll import unroll

LAST, FINAL = "last.pt", "model.pt"


@dataclass(frozen=True)
class TrainResult:
    """Where the run ended: the final checkpoint, its sha256 and the mean losses of the last log window."""

    checkpoint: str
    sha256: str
    steps: int
    resumed_from: int
    losses: dict[str, float]


def build_trainable(config: TrainConfig, device: torch.device) -> SAM2Model:
    """The model to train, with the same flags as at inference but the stability fallback of the
    decoder off (it is an inference-time heuristic): weights are identical either way."""
    torch.manual_seed(config.seed)
    model = build_model(
        config.model.name, image_size=config.model.image_size, apply_postprocessing=False, device=device
    )
    if config.model.weights is not None:
        load_weights(model, config.model.weights)
    return model.train()


def param_groups(model: SAM2Model, config: TrainConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not on biases, norms or position embeddings), and
    the image encoder at `encoder_lr_ratio` of the learning rate."""
    o = config.optim
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        groups.setdefault((name.startswith("image_encoder."), p.ndim > 1 and "pos_embed" not in name), []).append(p)
    return [
        {
            "params": params,
            "lr": o.lr * (o.encoder_lr_ratio if encoder else 1.0),
            "weight_decay": o.weight_decay if decay else 0.0,
        }
        for (encoder, decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `final_lr_ratio`."""
    o = config.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(o.steps - o.warmup_steps, 1)
    return o.final_lr_ratio + (1 - o.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def _print(line: str) -> None:
    print(line, flush=True)


def train(
    config: TrainConfig, *, model: SAM2Model | None = None, on_log: Callable[[str], None] = _print
) -> TrainResult:
    """Train as configured, resuming from `{output.uri}/last.pt` when it exists. `model` replaces the
    configured preset (a custom spec; its weights are the starting point unless the run resumes)."""
    storage.configure(config.storage)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.model.device)
    model = build_trainable(config, device) if model is None else model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    last_uri = storage.join(config.output.uri, LAST)
    start = _resume(last_uri, model, optimizer, scheduler, config, on_log)
    storage.ensure_writable_dir(config.output.uri)

    videos = load_videos(config.data, model.spec.image_size)
    sampler = ClipSampler(videos, config.clip, model.spec.image_size)
    frames_seen = sum(len(v.masklet) for v in videos)
    on_log(f"training {config.model.name} on {len(videos)} videos ({frames_seen} annotated frames), device {device}")

    window: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for step in range(start, config.optim.steps):
        parts = _step(model, optimizer, sampler, config, device, step)
        scheduler.step()
        for k, v in parts.items():
            window.setdefault(k, []).append(v)
        done = step + 1
        if done % config.output.checkpoint_every == 0 and done < config.optim.steps:
            _save_last(last_uri, model, optimizer, scheduler, config, done)
        if done % config.output.log_every == 0 or done == config.optim.steps:
            rate = (done - start) / (time.perf_counter() - t0)
            means = " ".join(f"{k} {np.mean(v):.4f}" for k, v in window.items())
            on_log(f"step {done}/{config.optim.steps} lr {scheduler.get_last_lr()[0]:.2e} {means} ({rate:.2f} steps/s)")
            if done < config.optim.steps:
                window = {}
    final = storage.join(config.output.uri, FINAL)
    sha = save_checkpoint(model.state_dict(), final, masklet=_metadata(config, config.optim.steps))
    _save_last(last_uri, model, optimizer, scheduler, config, config.optim.steps)
    on_log(f"wrote {final} (sha256 {sha})")
    return TrainResult(final, sha, config.optim.steps, start, {k: float(np.mean(v)) for k, v in window.items()})


def _step(
    model: SAM2Model,
    optimizer: torch.optim.Optimizer,
    sampler: ClipSampler,
    config: TrainConfig,
    device: torch.device,
    step: int,
) -> dict[str, float]:
    rng = np.random.default_rng([config.seed, step])
    clip = sampler.sample(rng)
    frames, masks = clip.frames.to(device), clip.masks.to(device)
    with _autocast(device, config.model.dtype):
        outputs = unroll(model, frames, masks, config.prompts, rng)
    totals: dict[str, torch.Tensor] = {}
    for t, out in outputs:
        for k, v in frame_loss(out, masks[t][:, None], config.loss).items():
            totals[k] = totals.get(k, 0) + v
    loss = totals["total"] / max(len(outputs), 1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    optimizer.step()
    return {k: float(v.detach()) / max(len(outputs), 1) for k, v in totals.items()}


def _metadata(config: TrainConfig, step: int) -> dict:
    """What a checkpoint says about itself (plain values, loadable with weights_only)."""
    return {
        "model_name": config.model.name,
        "image_size": config.model.image_size or 0,
        "step": step,
        "config": json.dumps(redacted(config.model_dump(mode="json"))),
    }


def _save_last(
    uri: str,
    model: SAM2Model,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    step: int,
) -> None:
    save_checkpoint(
        model.state_dict(),
        uri,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        masklet=_metadata(config, step),
    )


def _resume(
    uri: str,
    model: SAM2Model,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    on_log: Callable[[str], None],
) -> int:
    """Load `last.pt` if the run has one (read afresh, never from the download cache); the step to start from."""
    fs, path = storage.url_to_fs(uri)
    if not fs.exists(path):
        return 0
    with fsspec.open(uri, "rb") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    meta = state.get("masklet", {})
    if meta.get("model_name") != config.model.name or "optimizer" not in state:
        raise CheckpointError(
            f"{uri} is not a masklet training checkpoint of {config.model.name!r} "
            f"(it says {meta.get('model_name')!r}); use another output.uri or remove it"
        )
    load_state_dict(model, state["model"], uri)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step = int(meta["step"])
    on_log(f"resuming from {uri} at step {step}")
    return step
