"""The typed configuration of a masklet job: one YAML file plus dotted command-line overrides.

Everything is validated before any work starts, so a typo or an impossible value costs a
second on the laptop rather than an hour on a cluster. Errors name the dotted key at fault.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from typing import Annotated, Any, Literal, TypeVar, get_args

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from masklet.io import storage
from masklet.io.tars import MAX_MEMBER_BYTES
from masklet.weights import WeightsError, how_to_get, resolve_weights

MODEL_PRESETS = (
    "sam2_hiera_t",
    "sam2_hiera_s",
    "sam2_hiera_b_plus",
    "sam2_hiera_l",
    "sam2.1_hiera_t",
    "sam2.1_hiera_s",
    "sam2.1_hiera_b_plus",
    "sam2.1_hiera_l",
    "masklet_demo",
)

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

# Settings that only place the work (which Ray, how many workers of what size, retries, decode
# read-ahead, how the output root is spelt): they leave the outputs as they are.
PLACEMENT = (
    "ray",
    "workers.count",
    "workers.num_gpus",
    "workers.num_cpus",
    "workers.max_attempts",
    "workers.min_count",
    "workers.shard_timeout",
    "workers.video_timeout",
    "source.prefetch_frames",
    "output.uri",
    "storage",
)


GLOB_CHARS = "*?[{"  # fsspec globs and brace patterns


class ConfigError(ValueError):
    """A configuration that cannot run; the message names every key at fault."""


class Section(BaseModel):
    """Unknown keys are refused: a misspelt option must not be silently ignored. So are numbers that
    are not numbers: `.inf` or `nan` (`source.fps=.inf` would keep every frame) and booleans, which
    pydantic otherwise reads as 1 and 0 (`points_per_side=true` would run one point)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _names(annotation, (int, float)) and not _names(annotation, (bool,)):
            raise ValueError(f"{str(value).lower()} is a boolean; this setting takes a number")
        return value


def _names(annotation: Any, types: tuple[type, ...]) -> bool:
    """Whether a type annotation (unions, optionals, Annotated) admits any of `types`."""
    return annotation in types or any(_names(arg, types) for arg in get_args(annotation))


SectionT = TypeVar("SectionT", bound=Section)


class SourceConfig(Section):
    """Where the videos come from and how they are decoded."""

    uri: str = Field(min_length=1, description="fsspec URI, glob or brace pattern of the input")
    format: Literal["wds", "manifest", "frames"] = "wds"
    videos_per_shard: int = Field(default=64, ge=1, description="shard size for manifests and frame folders")
    fps: float | None = Field(default=6.0, gt=0, description="annotation fps; null keeps every frame")
    max_frames: int | None = Field(default=None, ge=1)
    prefetch_frames: int = Field(default=16, ge=1)
    max_member_bytes: int = Field(
        default=MAX_MEMBER_BYTES, ge=1, description="a tar member claiming more bytes is refused unread (an error row)"
    )


def require_weights(name: str, checkpoint: str | None, init: str, key: str) -> None:
    """Refuse a model that would run on untrained weights without `init: random` saying so.

    A job labelling with random weights writes training shards of noise, so "no weights" is an error
    naming how to get them, never a quiet default. `key` is the dotted name of the checkpoint setting.
    """
    section = key.rpartition(".")[0]
    if init == "random":
        if checkpoint is not None:
            raise ValueError(f"{key} and {section}.init=random exclude each other; drop one of them")
        return
    try:
        uri = resolve_weights(name, checkpoint, key)
    except WeightsError as exc:
        raise ValueError(str(exc)) from None
    if uri is None:
        raise ValueError(
            f"{name} has no weights: {how_to_get(name, key)}; or set {section}.init=random for untrained "
            "weights (their labels are noise: for tests only)"
        )


class ModelConfig(Section):
    """Which SAM 2 model to build and where its weights are."""

    name: str = "sam2.1_hiera_t"
    checkpoint: str | None = Field(
        default=None,
        description="fsspec URI of the weights (s3://, https://, hf://, a path), or 'official' (the preset's "
        "official file); null: the weights shipped with the package (masklet_demo)",
    )
    init: Literal["checkpoint", "random"] = Field(
        default="checkpoint", description="random: untrained seeded weights, only when asked for by name"
    )
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    image_size: int | None = Field(default=None, ge=64, multiple_of=32, description="null: the preset's (1024)")

    @field_validator("name")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_PRESETS)}")
        return name

    @model_validator(mode="after")
    def _has_weights(self) -> ModelConfig:
        require_weights(self.name, self.checkpoint, self.init, "model.checkpoint")
        return self

    @property
    def weights(self) -> str | None:
        """The URI to load (`checkpoint` resolved, else the shipped weights); None for `init: random`."""
        return None if self.init == "random" else resolve_weights(self.name, self.checkpoint)


class PipelineConfig(Section):
    """What happens to one video; the automatic-mask settings are those of SAM 2's generator
    (`SAM2AutomaticMaskGenerator`), under its names and with its defaults."""

    mode: Literal["auto", "prompted"] = "auto"
    points_per_side: int = Field(default=32, ge=1, le=256, description="256: 65,536 prompts per frame")
    points_per_batch: int = Field(default=64, ge=1)
    pred_iou_thresh: Fraction = 0.8
    stability_score_thresh: Fraction = 0.95
    stability_score_offset: float = Field(default=1.0, ge=0.0)
    mask_threshold: float = Field(default=0.0, description="mask logit threshold")
    box_nms_thresh: Fraction = 0.7
    crop_n_layers: int = Field(default=0, ge=0)
    crop_nms_thresh: Fraction = 0.7
    crop_overlap_ratio: float = Field(default=512 / 1500, ge=0.0, lt=1.0)
    crop_n_points_downscale_factor: int = Field(default=1, ge=1)
    min_mask_region_area: int = Field(default=0, ge=0)
    use_m2m: bool = Field(default=False, description="re-decode each candidate with its own mask as a prompt")
    multimask_output: bool = True
    reseed_every: int | None = Field(default=None, ge=1, description="annotated frames between re-seeds")
    new_object_iou_thresh: Fraction = 0.3
    edit_iou_thresh: Fraction = 0.7
    max_objects: int = Field(
        default=64,
        ge=1,
        description="cap on automatic objects tracked at once; a released object (drop_lost_after) frees its "
        "place, so with drop_lost_after null it also caps the objects found in a video",
    )
    propagate_backward: bool = False
    drop_lost_after: int | None = Field(
        default=None,
        ge=1,
        description="release an automatic masklet's object after this many consecutive annotated frames unseen "
        "(object score <= 0 or empty mask): it is tracked no more (a lost object costs a tracker row every "
        "frame), its masklet ends there, its place under max_objects is free, and a later seed frame that "
        "finds it again starts a new masklet; null: never, as SA-V objects leave and come back (long videos: "
        "docs/long-videos.md)",
    )
    prompt_frames: Literal["snap", "exact"] = Field(
        default="snap",
        description="a prompt on a frame the fps stride skips: snap to the nearest annotated frame, or refuse",
    )


class FiltersConfig(Section):
    """Per-masklet quality thresholds; a masklet failing any of them is kept=false with a reason.

    Defaults drop only masklets that are never visible and duplicates; masklet.pipelines.filters
    says what each threshold compares and in which order reasons are given.
    """

    min_visible_frames: int = Field(default=1, ge=0, description="0 also keeps masklets that are never visible")
    min_stability_mean: Fraction = 0.0
    min_pred_iou_mean: Fraction = 0.0
    min_object_score_mean: float | None = Field(
        default=None, allow_inf_nan=False, description="mean object-score logit over visible frames; null: off"
    )
    min_area_rel: Fraction = 0.0
    max_area_rel: Fraction = 1.0
    max_visibility_changes: int | None = Field(default=None, ge=0, description="null: off")
    dedup_iou: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        default=0.8, description="tube IoU at which the lower-quality masklet is a duplicate; null: off"
    )

    @classmethod
    def from_overrides(cls, overrides: list[str], base: dict[str, Any] | None = None) -> FiltersConfig:
        """`base` thresholds (e.g. a job's `filters`) with `key=value` overrides; `filters.` is optional."""
        data = dict(base or {})
        for text in overrides:
            path, value = parse_override(text)
            path = path[1:] if path[0] == "filters" and len(path) > 1 else path
            if len(path) != 1:
                raise ConfigError(f"override {text!r}: filters are one level deep, e.g. min_stability_mean=0.9")
            data[path[0]] = value
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, "filters", cls)) from None

    @model_validator(mode="after")
    def _area_range(self) -> FiltersConfig:
        if self.min_area_rel > self.max_area_rel:
            raise ValueError(f"min_area_rel ({self.min_area_rel}) must not exceed max_area_rel ({self.max_area_rel})")
        return self


class SplitConfig(Section):
    """One long video as several units of work: time chunks labelled by different workers, their
    masklets stitched into one set (docs/long-videos.md, "One video, many workers")."""

    chunk_seconds: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="split a video longer than chunk_seconds + overlap_seconds into chunks of this many seconds "
        "of video, each a unit of work of its own; null: never split",
    )
    overlap_seconds: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds each chunk runs on into the next one; masklets are matched on these frames",
    )
    min_iou: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.5,
        description="IoU over the overlap at which a masklet of one chunk continues one of the chunk before "
        "(matched one to one, Hungarian); below it, one ends and the other starts at the boundary",
    )

    @model_validator(mode="after")
    def _overlap_inside_chunk(self) -> SplitConfig:
        if self.chunk_seconds is not None and self.overlap_seconds >= self.chunk_seconds:
            raise ValueError(
                f"overlap_seconds ({self.overlap_seconds:g}) must be shorter than chunk_seconds "
                f"({self.chunk_seconds:g})"
            )
        return self


class OutputConfig(Section):
    """Where the masklet shards go."""

    uri: str = Field(min_length=1)
    write_video: bool = Field(default=False, description="copy each video's bytes into wds/{shard}.tar")


class RayConfig(Section):
    """Which Ray to run on: none given means an embedded local Ray on 127.0.0.1."""

    address: str | None = Field(default=None, description="null: embedded local Ray; 'auto' or HOST:PORT: join it")
    dashboard: bool = Field(default=True, description="embedded Ray only: serve its dashboard on 127.0.0.1")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime env of the workers (env_vars, working_dir, pip, ...); `masklet submit` sends it",
    )


class WorkersConfig(Section):
    """How many worker actors and what each one holds."""

    count: int | None = Field(default=None, ge=1, description="null: one per GPU, or one per CPU pool")
    num_gpus: float | None = Field(default=None, ge=0, description="null: 1 where GPUs exist, else 0")
    num_cpus: float = Field(default=1.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, description="tries per shard before it is recorded as failed")
    min_count: int | None = Field(
        default=None, ge=1, description="workers the job must keep running; fewer at any time: exit code 3"
    )
    shard_timeout: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="seconds a shard may take before its worker is killed"
    )
    video_timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="seconds one video may take (or a worker may not answer) before the worker is killed as hung",
    )
    pipeline: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="plug-in pipeline factory 'module:function'; null: the built-in one of pipeline.mode",
    )


class JobConfig(Section):
    """A whole job: everything `masklet run` needs."""

    source: SourceConfig
    model: ModelConfig = Field(default_factory=dict, validate_default=True)  # validated: no weights, no job
    pipeline: PipelineConfig = PipelineConfig()
    filters: FiltersConfig = FiltersConfig()
    split: SplitConfig = SplitConfig()
    output: OutputConfig
    ray: RayConfig = RayConfig()
    workers: WorkersConfig = WorkersConfig()
    storage: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="fsspec arguments per protocol for every process of the job, e.g. "
        "{s3: {endpoint_url: 'http://minio:9000'}}; keep credentials in the environment, not here",
    )

    @field_validator("storage")
    @classmethod
    def _known_protocols(cls, storage: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        known = set(fsspec.available_protocols())
        unknown = sorted(set(storage) - known)
        if unknown:
            raise ValueError(f"unknown storage protocol {', '.join(unknown)}; expected fsspec protocols such as s3, gs")
        return storage

    @model_validator(mode="after")
    def _split_needs_automatic_labels(self) -> JobConfig:
        """A prompted object lives in the chunk its prompt is on: the chunks after it would have to wait for
        that chunk's last mask, so splitting would run them one after another."""
        if self.split.chunk_seconds is not None and self.pipeline.mode == "prompted" and self.workers.pipeline is None:
            raise ValueError(
                "split.chunk_seconds splits videos for the automatic pipeline (pipeline.mode: auto); prompted "
                "objects cannot be tracked across chunks labelled at once"
            )
        return self

    @model_validator(mode="after")
    def _output_is_not_input(self) -> JobConfig:
        """The outputs must not become inputs: a rerun would list them and refuse or label them."""
        source, output = self.source.uri, self.output.uri
        cut = min((source.find(c) for c in GLOB_CHARS if c in source), default=len(source))
        folder = source if cut == len(source) else source[:cut].rpartition("/")[0]
        pattern = source[len(folder) :].lstrip("/")
        if storage.normalized(output) == storage.normalized(folder) or (
            storage.is_inside(output, folder) and (not pattern or "/" in pattern or "**" in pattern)
        ):
            raise ValueError(
                f"output.uri {output!r} is inside the input {source!r}: the outputs would be read as inputs; "
                "write them beside it"
            )
        return self

    def content_hash(self) -> str:
        """sha256 of every setting that decides the outputs (canonical JSON), recorded in job.json, every
        output row and every done marker, so a resume can refuse a mix. `PLACEMENT` settings are left
        out: a job started on a laptop can be resumed on a cluster with more workers."""
        data = self.model_dump(mode="json")
        if data["split"]["chunk_seconds"] is None:  # off: the hash of a job from before `split` existed
            data.pop("split")
        for dotted in PLACEMENT:
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            node.pop(leaf)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _known_keys(cls: type[BaseModel], parents: tuple[Any, ...]) -> list[str]:
    """The keys a section at `parents` (a dotted location under `cls`) accepts; [] where it is not a section."""
    for part in parents:
        field = cls.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return list(cls.model_fields)


def _unknown_key(cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """'unknown key', with the closest accepted key when one is close enough to be a typo."""
    close = difflib.get_close_matches(str(loc[-1]), _known_keys(cls, loc[:-1]), n=1, cutoff=0.6)
    return f"unknown key (did you mean {'.'.join(map(str, (*loc[:-1], close[0])))}?)" if close else "unknown key"


def _format_errors(exc: ValidationError, origin: str, cls: type[BaseModel]) -> str:
    lines = [f"invalid config {origin}:"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            message = _unknown_key(cls, err["loc"])
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
        shown = err["type"] not in ("missing", "extra_forbidden") and not isinstance(err["input"], dict)
        got = f" (got {err['input']!r})" if shown else ""
        lines.append(f"  {key}: {message}{got}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-typed value (`2` is an int, `null` None)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override in a nested dict, refusing to descend through a non-mapping."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(uri: str, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML config from any fsspec URI, apply overrides and validate the whole."""
    return validate_config(read_yaml_config(uri, overrides), origin=uri)


def read_yaml_config(uri: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML mapping from any fsspec URI with dotted overrides applied (not yet validated)."""
    try:
        with fsspec.open(uri, "r") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"config file {uri!r} not found") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {uri!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {uri!r} must hold a mapping of sections, not {type(data).__name__}")
    return apply_overrides(data, overrides or [])


def validate_config(data: dict[str, Any], origin: str = "(dict)") -> JobConfig:
    return validate_section(JobConfig, data, origin)


def validate_section(cls: type[SectionT], data: dict[str, Any], origin: str = "(dict)") -> SectionT:
    """`cls.model_validate(data)`, with every error turned into one ConfigError naming the dotted keys."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin, cls)) from None


def dump_config(config: JobConfig) -> str:
    """The fully resolved config as YAML, defaults included, secrets redacted."""
    return yaml.safe_dump(redacted(config.model_dump(mode="json")), sort_keys=False)


SECRET_NAME = re.compile(r"key|secret|token|passw|credential|signature|auth", re.IGNORECASE)
REDACTED = "<redacted>"
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redacted(value: Any) -> Any:
    """`value` (a config as plain data) with every secret replaced by REDACTED, for anything written or
    shown: job.json, `masklet config`, reports, checkpoints' metadata. A secret is the value of a key
    named like one (storage.s3.secret, client_kwargs.aws_secret_access_key, env_vars.HF_TOKEN) or the
    user:password part of a URL."""
    if isinstance(value, dict):
        return {
            k: REDACTED if SECRET_NAME.search(str(k)) and not isinstance(v, dict | list | bool) else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", value)
    return value


def unredacted(value: Any) -> Any:
    """`value` without the entries `redacted` blanked, so settings read back from a job.json (e.g. its
    storage section) fall back to the reader's own credentials instead of using the placeholder."""
    if isinstance(value, dict):
        return {k: unredacted(v) for k, v in value.items() if not (isinstance(v, str) and REDACTED in v)}
    return value


STORAGE_ENV = "MASKLET_STORAGE"  # the storage section as JSON: how `masklet submit` passes it, off the command line


def storage_from_env() -> dict[str, Any]:
    """The storage section `masklet submit` put in the job's environment (empty when none)."""
    text = os.environ.get(STORAGE_ENV)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{STORAGE_ENV} is not valid JSON: {exc.msg}") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{STORAGE_ENV} must be a JSON object of storage options per protocol")
    return options
