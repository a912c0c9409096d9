"""cluster.yaml passes Ray's own cluster-launcher validation and describes the lungdr cluster we document."""

from __future__ import annotations

import copy

import pytest
import yaml


@pytest.fixture(scope="module")
def raw(repo) -> dict:
    return yaml.safe_load((repo / "cluster.yaml").read_text())


def test_ray_validates_cluster_yaml(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # raises on any schema error
    assert prepared["head_node_type"] == "head"


def test_ray_rejects_a_broken_config(raw):
    """The validation above is real: a misspelt key or a wrong type fails it."""
    import jsonschema

    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_node_groups(raw):
    types = raw["available_node_types"]
    assert set(types) == {"head", "gpu_worker", "cpu_worker"}
    assert types["head"]["resources"]["CPU"] == 0
    gpu, cpu = types["gpu_worker"], types["cpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p"))
    assert "GPU" not in cpu["resources"] and cpu["resources"]["CPU"] >= 8
    for group in (gpu, cpu):
        assert 0 <= group["min_workers"] < group["max_workers"]
    assert sum(t.get("max_workers", 0) for t in types.values()) <= raw["max_workers"]


def test_s3_by_instance_profile_not_keys(raw, repo, find_secrets):
    for name, t in raw["available_node_types"].items():
        assert ":instance-profile/" in t["node_config"]["IamInstanceProfile"]["Arn"], name
    assert find_secrets((repo / "cluster.yaml").read_text()) == []


def test_token_auth_on_every_node(raw):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in raw[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert "~/.ray/auth_token" in raw["file_mounts"]


def test_setup_installs_lungdr_with_pyproject_pins(raw, pins, pinned_in):
    setup = "\n".join(raw["setup_commands"])
    assert "lungdr @ git+" in setup
    written = pinned_in(setup)
    for name in ("ray", "torch", "torchvision"):
        assert written.get(name) == pins[name], name
