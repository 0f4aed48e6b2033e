"""infra/: the container image, the KubeRay manifests and the Ray cluster launcher config agree with the repo.

No Docker, no Kubernetes and no network here: the files are parsed and checked against the KubeRay v1
field names (the json tags of ray-operator/apis/ray/v1), Ray's own cluster-launcher schema, the
versions the repo pins, and the CLI (the RayJob's entrypoint must parse and name the ConfigMap's config).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from masklet.cli import build_parser
from masklet.config import JobConfig, load_config, validate_config
from masklet.jobs.submit import build_submission

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
LAUNCHER = INFRA / "ray" / "cluster-aws.yaml"

# KubeRay v1 field names (json tags of RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AutoscalerOptions,
# RayJobSpec). A key outside these is a typo the API server would drop or refuse.
RAYCLUSTER_SPEC = {
    "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
    "headServiceAnnotations", "gcsFaultToleranceOptions", "suspend", "managedBy",
}  # fmt: skip
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams", "template",
    "scaleStrategy", "numOfHosts", "suspend",
}  # fmt: skip
AUTOSCALER_OPTIONS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode", "env",
    "envFrom", "volumeMounts",
}  # fmt: skip
RAYJOB_SPEC = {
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "clusterSelector", "submitterPodTemplate",
    "submitterConfig", "metadata", "suspend", "managedBy", "deletionStrategy", "entrypointNumCpus",
    "entrypointNumGpus", "entrypointResources",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
RUNTIME_ENV_KEYS = {"env_vars", "working_dir", "py_modules", "pip", "uv", "conda", "container", "image_uri", "config"}
CREDENTIAL = re.compile(r"aws_access_key_id|aws_secret_access_key|aws_session_token|secret|password|token", re.I)


def load_all(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) of the RayCluster and of the RayJob's cluster."""
    yield "raycluster.yaml", one(load_all(RAYCLUSTER), "RayCluster")["spec"]
    yield "rayjob.yaml", one(load_all(RAYJOB), "RayJob")["spec"]["rayClusterSpec"]


def containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for c in spec["headGroupSpec"]["template"]["spec"]["containers"]:
        yield "head", c
    for group in spec["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            yield group["groupName"], c


def dockerfile_args() -> dict[str, str]:
    """The ARG defaults of the Dockerfile."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))


def pinned(package: str) -> str:
    """The version requirements/dev-constraints.txt pins `package` to."""
    text = (ROOT / "requirements" / "dev-constraints.txt").read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)$", text, re.M | re.I)
    assert match, f"{package} is not pinned in requirements/dev-constraints.txt"
    return match.group(1)


def job_config_text() -> str:
    return one(load_all(RAYJOB), "ConfigMap")["data"]["job.yaml"]


def entrypoint_args() -> Any:
    """The RayJob's entrypoint parsed by masklet's own CLI parser."""
    argv = shlex.split(one(load_all(RAYJOB), "RayJob")["spec"]["entrypoint"])
    assert argv[0] == "masklet", argv
    return build_parser().parse_args(argv[1:])


# ---- the image ---------------------------------------------------------------------------------------


def test_dockerfile_pins_the_repos_versions() -> None:
    args = dockerfile_args()
    assert args["RAY_VERSION"] == pinned("ray") == ray.__version__
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^TORCH_SPEC \?= torch=={re.escape(args['TORCH_VERSION'])}$", makefile, re.M)
    # a CUDA build of torch, from a CUDA wheel index; the CPU build stays the Makefile's, for dev
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu1\d\d", args["TORCH_INDEX_URL"])
    python = args["PYTHON_VERSION"]
    requires = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert requires and re.fullmatch(r"3\.\d+\.\d+", python)
    assert tuple(int(p) for p in python.split(".")[:2]) >= (int(requires.group(1)), int(requires.group(2)))


def test_dockerfile_installs_masklet_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line[0].isspace()]
    instructions = [i for i in instructions if i[0].isupper() and i[0] != "#"]
    froms = [rest for op, rest in instructions if op == "FROM"]
    assert froms == ["python:${PYTHON_VERSION}-slim-bookworm"]
    users = [rest.strip() for op, rest in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert users[-1] == "1000"  # the uid the KubeRay manifests run as
    assert "-c /opt/masklet-src/requirements/dev-constraints.txt" in text  # the tested versions
    assert '"ray[default]==${RAY_VERSION}"' in text and '"torch==${TORCH_VERSION}"' in text
    assert "rm -rf /var/lib/apt/lists/*" in text and "PIP_NO_CACHE_DIR=1" in text  # no caches in layers
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:2] == ["*", "!pyproject.toml"]  # only what the image installs is sent


def image_tag() -> str:
    args = dockerfile_args()
    cuda = args["TORCH_INDEX_URL"].rsplit("/", 1)[1]
    return f"0.1.0-ray{args['RAY_VERSION']}-py{args['PYTHON_VERSION']}-{cuda}"


def test_every_manifest_runs_the_image_of_this_repo() -> None:
    from masklet import __version__

    assert image_tag().startswith(f"{__version__}-")
    for where, spec in cluster_specs():
        assert spec["rayVersion"] == ray.__version__ == dockerfile_args()["RAY_VERSION"], where
        for group, c in containers(spec):
            name, _, tag = c["image"].rpartition(":")
            assert name.endswith("/masklet") and tag == image_tag(), (where, group, c["image"])


# ---- KubeRay -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where,spec", list(cluster_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_cluster_spec_uses_kuberay_v1_fields(where: str, spec: dict[str, Any]) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert {"headGroupSpec", "workerGroupSpecs", "rayVersion"} <= set(spec)
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP and {"rayStartParams", "template"} <= set(spec["headGroupSpec"])
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS
    assert spec["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
    for params in [spec["headGroupSpec"]["rayStartParams"], *(g["rayStartParams"] for g in spec["workerGroupSpecs"])]:
        assert all(isinstance(v, str) for v in params.values()), params  # map[string]string in the CRD


@pytest.mark.parametrize("where,spec", list(cluster_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_cpu_head_and_autoscaling_gpu_workers(where: str, spec: dict[str, Any]) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no worker actor lands on the head
    for c in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in {**c["resources"].get("requests", {}), **c["resources"]["limits"]}
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu in its limits"
    for g in gpu_groups:
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"] and g["maxReplicas"] > g["minReplicas"]
        (c,) = g["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1  # one worker actor per GPU, one GPU per pod
        assert int(c["resources"]["limits"]["cpu"]) >= 4  # CPUs to decode video for that GPU
        tolerations = g["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("where,spec", list(cluster_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_s3_credentials_come_from_a_secret(where: str, spec: dict[str, Any]) -> None:
    for group, c in containers(spec):
        env = {e["name"]: e for e in c["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[name], (where, group, name)
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "masklet-s3", (where, group, name)
        for e in c["env"]:
            if CREDENTIAL.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], (where, group, e["name"])
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    pod = spec["headGroupSpec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000


def test_rayjob_fields_and_lifecycle() -> None:
    docs = load_all(RAYJOB)
    job = one(docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and one(load_all(RAYCLUSTER), "RayCluster")["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["backoffLimit"], int) and 1 <= spec["backoffLimit"] <= 5  # retries resume; bounded cost
    assert spec["submissionMode"] in SUBMISSION_MODES
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and set(runtime_env) <= RUNTIME_ENV_KEYS
    assert not CREDENTIAL.search(spec["runtimeEnvYAML"])  # secrets in a runtime env show in the dashboard


def test_rayjob_entrypoint_runs_the_configmaps_config() -> None:
    docs = load_all(RAYJOB)
    args = entrypoint_args()
    assert args.command == "run" and args.config_json is None and not args.force
    head = one(docs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if v.get("configMap", {}).get("name") == "masklet-job")
    (mount,) = [m for c in head["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert args.config == f"{mount['mountPath']}/job.yaml"  # the driver runs on the head, which mounts it
    assert one(docs, "ConfigMap")["metadata"]["name"] == "masklet-job"


def test_configmap_config_is_valid_and_holds_no_credentials(tmp_path: Path) -> None:
    text = job_config_text()
    data = yaml.safe_load(text)
    validate_config(data, origin="ConfigMap masklet-job")
    assert not CREDENTIAL.search(text.replace("secretKeyRef", ""))
    assert data["source"]["uri"].startswith("s3://") and data["output"]["uri"].startswith("s3://")
    # the entrypoint's overrides applied to it, as the driver on the head will
    path = tmp_path / "job.yaml"
    path.write_text(text)
    config = load_config(str(path), entrypoint_args().overrides)
    assert config.ray.address == "auto"
    (group,) = one(load_all(RAYJOB), "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    # started with no GPU node, the driver only asks for workers.count workers: that is what scales the group up
    assert config.workers.count == group["maxReplicas"] and config.workers.num_gpus == 1
    assert config.workers.num_cpus <= int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])


def test_submit_dry_run_sends_what_the_rayjob_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`masklet submit --dry-run` on the ConfigMap's config prints an entrypoint that runs the same job as
    the RayJob's, and with the RayJob's env vars given as --env, the RayJob's runtime env."""
    from masklet.cli import main

    path = tmp_path / "job.yaml"
    path.write_text(job_config_text())
    spec = one(load_all(RAYJOB), "RayJob")["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    env = [f"{k}={v}" for k, v in runtime_env.get("env_vars", {}).items()]
    assert main(["submit", str(path), "--dry-run", *(f"--env={e}" for e in env)]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"entrypoint", "runtime_env"}
    assert json.loads(lines["runtime_env"]) == runtime_env
    argv = shlex.split(lines["entrypoint"])
    sent = build_parser().parse_args(argv[1:])
    assert argv[0] == "masklet" and sent.command == "run"
    submitted = validate_config(json.loads(sent.config_json))
    rayjob: JobConfig = load_config(str(path), entrypoint_args().overrides)
    assert submitted.model_dump() == rayjob.model_dump()
    assert submitted.content_hash() == rayjob.content_hash()
    assert build_submission(rayjob, env=env).runtime_env == runtime_env


# ---- the Ray cluster launcher ------------------------------------------------------------------------


def test_cluster_launcher_config_is_valid_for_this_ray() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for t in types.values() if re.match(r"(g4dn|g5|g6|g6e|p4d|p5)\.", t["node_config"]["InstanceType"])]
    assert gpu_types and any(t["max_workers"] > 0 for t in gpu_types)
    assert max(t["max_workers"] for t in gpu_types) <= config["max_workers"]
    commands = "\n".join(config["setup_commands"])
    args = dockerfile_args()
    assert f"--python {args['PYTHON_VERSION']}" in commands  # the image's Python, on every node
    assert f'"ray[default]=={args["RAY_VERSION"]}"' in commands and f"torch=={args['TORCH_VERSION']}" in commands
    assert f"--index-url {args['TORCH_INDEX_URL']}" in commands
    assert "-c ~/masklet-src/requirements/dev-constraints.txt" in commands and "~/masklet-src" in config["file_mounts"]
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])
