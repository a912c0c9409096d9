"""KubeRay manifests, the Serve config and the Dockerfile: the fields KubeRay / Serve require, one Ray version
everywhere (pyproject's pin), GPUs where the GPU group says so, S3 by IRSA and the token from a Secret."""

from __future__ import annotations

import re

import pytest
import yaml

MANIFESTS = ["raycluster.yaml", "rayjob-train.yaml", "rayjob-score.yaml", "rayservice.yaml"]
CLUSTER_KEY = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}


def _load(repo, name):
    docs = [d for d in yaml.safe_load_all((repo / "infra" / "k8s" / name).read_text()) if d]
    assert len(docs) == 1, name
    return docs[0]


def _cluster_spec(doc):
    key = CLUSTER_KEY[doc["kind"]]
    return doc["spec"] if key is None else doc["spec"][key]


def _pods(spec):
    yield "head", spec["headGroupSpec"]
    for g in spec["workerGroupSpecs"]:
        yield g["groupName"], g


def _serve_schema(obj):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(obj)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_shape(repo, pins, name, find_secrets):
    doc = _load(repo, name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in CLUSTER_KEY
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == pins["ray"]
    for group, g in _pods(spec):
        assert isinstance(g["rayStartParams"], dict), group
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), f"{group}: rayStartParams must be strings"
        pod = g["template"]["spec"]
        assert pod["serviceAccountName"] == "lungdr", group
        for c in pod["containers"]:
            assert c["name"] and f"ray{pins['ray']}" in c["image"].split(":")[-1], (group, c["image"])
            res = c["resources"]
            assert res["requests"] == res["limits"], f"{group}: Guaranteed QoS (requests == limits)"
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], "the token comes from a Secret"
        if group != "head":
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], group
    assert find_secrets((repo / "infra" / "k8s" / name).read_text()) == []


@pytest.mark.parametrize("name", MANIFESTS)
def test_gpu_group_requests_gpus(repo, name):
    spec = _cluster_spec(_load(repo, name))
    groups = dict(_pods(spec))
    gpu = groups["gpu"]
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    for c in gpu["template"]["spec"]["containers"]:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for group, g in groups.items():
        if group != "gpu":
            assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])


@pytest.mark.parametrize("name,script", [("rayjob-train.yaml", "ray_jobs/train.py"), ("rayjob-score.yaml", "ray_jobs/score.py")])
def test_rayjob_entrypoints(repo, name, script):
    spec = _load(repo, name)["spec"]
    words = spec["entrypoint"].split()
    assert words[:2] == ["python", script]
    uris = [w for w in words if "://" in w]
    assert uris and all(u.startswith("s3://") for u in uris)
    assert spec["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/home/ray/lungdr"


def test_irsa_service_account(repo, find_secrets):
    sa = yaml.safe_load((repo / "infra" / "k8s" / "serviceaccount.yaml").read_text())
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "lungdr"
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert find_secrets(yaml.safe_dump(sa)) == []


def test_one_serve_config_used_by_kubernetes(repo, find_secrets):
    """ray_jobs/serve_config.yaml is the only Serve config; the RayService embeds exactly it, and its pods get
    the API token variable the app's token_env names from a Secret."""
    assert not (repo / "infra" / "serve_config.yaml").exists(), "keep one Serve config: ray_jobs/serve_config.yaml"
    path = repo / "ray_jobs" / "serve_config.yaml"
    single = yaml.safe_load(path.read_text())
    doc = _load(repo, "rayservice.yaml")
    k8s = yaml.safe_load(doc["spec"]["serveConfigV2"])
    app = _serve_schema(k8s).applications[0]
    assert app.import_path == "lungdr.scale.serve:build_app" and app.args["bundle_uri"].startswith("s3://")
    assert k8s == single
    for group, g in _pods(doc["spec"]["rayClusterConfig"]):
        for c in g["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c["env"]}
            assert "secretKeyRef" in env[app.args["token_env"]]["valueFrom"], group
    assert find_secrets(path.read_text()) == []


def test_serve_schema_rejects_a_bad_config():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="import path"):
        _serve_schema({"applications": [{"name": "x", "import_path": "no_colon_or_dot", "args": {}}]})


def test_dockerfile_matches_pyproject(repo, pins, pinned_in):
    text = (repo / "infra" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{pins['ray']}-py311") and base.endswith("-gpu")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    assert args["RAY_VERSION"] == pins["ray"]
    assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]
    assert re.search(r"^USER\s+(?!root\b|0\b)\w+", text, re.M), "must run as a non-root user"
    assert "pip install ." in text
    literal = pinned_in(text)
    assert all(pins.get(k, v) == v for k, v in literal.items()), literal


def test_dockerignore_keeps_secrets_and_bulk_out(repo):
    lines = set((repo / "infra" / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests"} <= lines and "**/auth_token" in lines
    assert (repo / "infra" / "Dockerfile.dockerignore").resolve() == (repo / "infra" / ".dockerignore").resolve()


def test_secret_scanner_finds_secrets(find_secrets):
    """The no-secrets checks above can fail: the scanner catches real-looking credentials."""
    fake = "aws_secret_access_key = abc/def\nkey: AKIA" + "ABCDEFGHIJKLMNOP\nRAY_AUTH_TOKEN=" + "0123456789abcdef0123"
    assert len(find_secrets(fake)) == 3
