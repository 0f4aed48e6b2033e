import json
from pathlib import Path

import fsspec
import pytest

from masklet.config import REDACTED, ConfigError, JobConfig, load_config, redacted, unredacted, validate_config
from masklet.pipelines.autolabel import automask_config
from masklet.pipelines.automask import AutoMaskConfig

DEMO = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
MINIMAL = {"source": {"uri": "in/"}, "output": {"uri": "out/"}, "model": {"init": "random"}}  # untrained, by name


def test_demo_config_loads_with_defaults() -> None:
    config = load_config(DEMO)
    assert config.model.name == "masklet_demo" and config.model.checkpoint is None  # the shipped weights
    assert config.pipeline.points_per_side == 16
    assert (config.pipeline.pred_iou_thresh, config.pipeline.stability_score_thresh) == (0.6, 0.75)  # demo model's
    assert config.pipeline.box_nms_thresh == 0.7  # SAM 2 generator default
    assert (config.pipeline.reseed_every, config.pipeline.propagate_backward) == (1, True)  # late objects found
    assert config.ray.address is None
    assert config.workers.count is None


def test_dotted_overrides_are_typed_by_yaml() -> None:
    config = load_config(DEMO, ["model.name=sam2_hiera_s", "model.checkpoint=official", "workers.count=2",
                                "pipeline.reseed_every=null",
                                "ray.address=ray://head:10001", "workers.num_cpus=0.5"])
    assert config.model.name == "sam2_hiera_s"
    assert config.workers.count == 2
    assert config.pipeline.reseed_every is None
    assert config.ray.address == "ray://head:10001"
    assert config.workers.num_cpus == 0.5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("workers.cont=2", "workers.cont: unknown key"),
        ("modle.name=x", "modle: unknown key"),
        ("workers.count=two", "workers.count: Input should be a valid integer"),
        ("workers.count=2.5", "workers.count: Input should be a valid integer"),
        ("workers.count=0", "workers.count: Input should be greater than or equal to 1"),
        ("pipeline.pred_iou_thresh=1.5", "pipeline.pred_iou_thresh: Input should be less than or equal to 1"),
        ("pipeline.mode=manual", "pipeline.mode: Input should be 'auto' or 'prompted'"),
        ("model.name=sam3", "model.name: unknown model 'sam3'; expected one of sam2_hiera_t"),
        ("model.device=gpu", "model.device: String should match pattern"),
        ("model.sha256=abc", "model.sha256: String should match pattern"),
        ("filters.min_area_rel=0.5", "min_area_rel (0.5) must not exceed max_area_rel (0.1)"),
        ("output.uri=in/", "output.uri 'in/' is inside the input 'in/': the outputs would be read as inputs"),
        ("source.fps=.inf", "source.fps: Input should be a finite number"),
        ("pipeline.mask_threshold=.nan", "pipeline.mask_threshold: Input should be a finite number"),
        ("pipeline.points_per_side=true", "pipeline.points_per_side: true is a boolean; this setting takes a number"),
        ("workers.num_gpus=false", "workers.num_gpus: false is a boolean"),
        ("pipeline.points_per_side=100000", "pipeline.points_per_side: Input should be less than or equal to 256"),
        ("storage.s4.endpoint_url=x", "storage: unknown storage protocol s4; expected fsspec protocols"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override: str, expected: str) -> None:
    data = {**MINIMAL, "filters": {"max_area_rel": 0.1}}
    path = "memory://bad.yaml"
    import yaml

    with fsspec.open(path, "w") as f:
        f.write(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert expected in str(err.value)
    assert str(err.value).startswith("invalid config memory://bad.yaml")


@pytest.mark.parametrize(
    ("source", "output", "inside"),
    [
        ("corpus/shard-*.tar", "corpus/out", False),  # the glob reads no folder below corpus/
        ("corpus/shard-*.tar", "./corpus/", True),
        ("corpus/**/*.tar", "corpus/out", True),
        ("corpus/*/*.tar", "corpus/out", True),
        ("corpus/shard-{000..003}.tar", "corpus", True),
        ("corpus", "corpus/out", True),  # a folder of frame folders
        ("file://{cwd}/corpus", "./corpus/out", True),
        ("corpus/videos.jsonl", "corpus/out", False),
        ("s3://bucket/in/*.tar", "s3://bucket/out", False),
        ("s3://bucket/in/", "s3://bucket//in/out/", True),
        ("s3://bucket/in/**.tar", "s3://bucket/in/out", True),
    ],
)
def test_output_inside_the_input_is_refused(source: str, output: str, inside: bool) -> None:
    data = {**MINIMAL, "source": {"uri": source.replace("{cwd}", str(Path.cwd()))}, "output": {"uri": output}}
    if not inside:
        validate_config(data)
        return
    with pytest.raises(ConfigError, match="is inside the input"):
        validate_config(data)


def test_secrets_are_redacted_wherever_a_config_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    from masklet.cli import main

    data = {
        **MINIMAL,
        "storage": {"s3": {"key": "AKIA1", "secret": "hunter2", "client_kwargs": {"region_name": "eu-west-1"}}},
        "ray": {"runtime_env": {"env_vars": {"HF_TOKEN": "hf_abc", "OMP_NUM_THREADS": "2"}}},
    }
    config = validate_config(data)
    shown = redacted(config.model_dump(mode="json"))
    region = {"region_name": "eu-west-1"}
    assert shown["storage"]["s3"] == {"key": REDACTED, "secret": REDACTED, "client_kwargs": region}
    assert shown["ray"]["runtime_env"]["env_vars"] == {"HF_TOKEN": REDACTED, "OMP_NUM_THREADS": "2"}
    assert redacted("https://user:pw@host/x.pt") == f"https://{REDACTED}@host/x.pt"
    assert unredacted({"endpoint_url": redacted("http://u:p@s3"), "anon": False}) == {"anon": False}
    assert unredacted(shown["storage"]) == {"s3": {"client_kwargs": {"region_name": "eu-west-1"}}}
    assert validate_config(redacted(config.model_dump(mode="json"))).content_hash() == config.content_hash()
    demo = load_config(DEMO).model_dump(mode="json")
    assert redacted(demo) == demo  # no setting of a job is named like a secret
    path = "memory://secret.yaml"
    with fsspec.open(path, "w") as f:
        f.write(json.dumps(data))
    assert main(["config", path]) == 0
    printed = capsys.readouterr().out
    assert "hunter2" not in printed and "AKIA1" not in printed and "hf_abc" not in printed


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"source": {"uri": "a", "fps": -1}, "workers": {"count": 0}})
    message = str(err.value)
    assert "source.fps: Input should be greater than 0 (got -1)" in message
    assert "workers.count: Input should be greater than or equal to 1 (got 0)" in message
    assert "output: required key is missing" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("workers.count", "is not of the form key.path=value"),
        ("=3", "is not of the form key.path=value"),
        ("workers..count=3", "is not of the form key.path=value"),
        ("source.uri.deeper=1", "source.uri is a value, not a section"),
        ("workers.count=[1", "value is not valid YAML"),
    ],
)
def test_malformed_overrides_are_refused(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        load_config(DEMO, [override])


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, not list"):
        load_config(str(listing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("source: {uri: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(str(broken))


def test_content_hash_is_stable_and_sensitive() -> None:
    a = validate_config(MINIMAL)
    b = JobConfig.model_validate(MINIMAL)
    assert a.content_hash() == b.content_hash()
    c = validate_config({**MINIMAL, "pipeline": {"points_per_side": 8}})
    assert c.content_hash() != a.content_hash()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"pipeline": {"points_per_sid": 8}}, "points_per_sid: unknown key (did you mean pipeline.points_per_side?)"),
        ({"modle": {}}, "modle: unknown key (did you mean model?)"),
        ({"workers": {"zzz": 1}}, "workers.zzz: unknown key\n"),
    ],
)
def test_unknown_keys_suggest_the_closest_one(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({**MINIMAL, **data})
    assert expected in str(err.value) + "\n"


def test_no_weights_is_refused_naming_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASKLET_WEIGHTS_MIRROR", raising=False)
    with pytest.raises(ConfigError) as err:
        validate_config({"source": {"uri": "in/"}, "output": {"uri": "out/"}})
    message = str(err.value)
    assert "model: sam2.1_hiera_t has no weights: set model.checkpoint to 'official'" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in message
    assert "hf://facebook/sam2.1-hiera-tiny/sam2.1_hiera_tiny.pt" in message
    assert "MASKLET_WEIGHTS_MIRROR" in message and "model.init=random" in message
    with pytest.raises(ConfigError, match="model.checkpoint and model.init=random exclude each other"):
        validate_config({**MINIMAL, "model": {"init": "random", "checkpoint": "s3://b/m.pt"}})
    with pytest.raises(ConfigError, match="'sam2.1_hiera_l' names another model than 'sam2.1_hiera_t'"):
        validate_config({**MINIMAL, "model": {"checkpoint": "sam2.1_hiera_l"}})
    with pytest.raises(ConfigError, match="masklet_demo has no official checkpoint"):
        validate_config({**MINIMAL, "model": {"name": "masklet_demo", "checkpoint": "official"}})


def test_every_generator_setting_is_accepted_under_its_official_name() -> None:
    """The six the official SAM2AutomaticMaskGenerator has besides the basics were refused as unknown keys."""
    official = {
        "use_m2m": True,
        "multimask_output": False,
        "crop_nms_thresh": 0.5,
        "crop_overlap_ratio": 0.25,
        "crop_n_points_downscale_factor": 2,
        "mask_threshold": 0.5,
        "crop_n_layers": 1,
    }
    config = validate_config({**MINIMAL, "pipeline": official})
    generator = automask_config(config.pipeline)
    assert {k: getattr(generator, k) for k in official} == official
    assert automask_config(validate_config(MINIMAL).pipeline) == AutoMaskConfig()  # same defaults as the official
