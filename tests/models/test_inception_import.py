"""TensorFlow-layout Inception-v3 weights -> torchvision's layout (``lungdr import-weights``).

The real source (Google's 2015-12-05 network, 87 MB) is not shipped; these tests build a TensorFlow-layout state
dict from a random torchvision Inception-v3 (conv + scale-free BatchNorm per conv, in forward order) and check that
the conversion reproduces that network exactly, and that wrong inputs are refused."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from torchvision.models import inception_v3

from lungdr.errors import ConfigError
from lungdr.models.inception_import import (convert_tf_inception, feature_agreement, import_weights,
                                            torchvision_convs)


@pytest.fixture(scope="module")
def source():
    """A random torchvision Inception-v3 whose BatchNorms have no scale (as TensorFlow's) and random statistics."""
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    for name in torchvision_convs(net):
        bn = net.get_submodule(name).bn
        bn.weight.data.fill_(1.0)
        bn.bias.data.normal_(0, 0.1)
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    net.fc = torch.nn.Identity()
    return net.eval()


def tf_layout(net) -> dict:
    """The TensorFlow port's naming: ``net.layers.<conv>.weight / beta / mean / var``, in forward order."""
    out = {}
    for i, name in enumerate(torchvision_convs(net)):
        m = net.get_submodule(name)
        out.update({f"net.layers.c{i}.weight": m.conv.weight.detach().clone(),
                    f"net.layers.c{i}.beta": m.bn.bias.detach().clone(),
                    f"net.layers.c{i}.mean": m.bn.running_mean.clone(),
                    f"net.layers.c{i}.var": m.bn.running_var.clone()})
    return out


class TFPort(torch.nn.Module):
    """Stands in for the TorchScript port's interface: ``net.layers(x)`` gives the pooled 2048-d features."""

    def __init__(self, body):
        super().__init__()
        self.net = torch.nn.Module()
        self.net.layers = body


def test_conversion_reproduces_the_network(source):
    converted = convert_tf_inception(tf_layout(source))
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
    missing = net.load_state_dict(converted, strict=False).missing_keys
    assert sorted(missing) == ["fc.bias", "fc.weight"]
    net.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), source(x))


def test_feature_agreement_tells_a_right_mapping_from_a_wrong_one(source):
    layout = tf_layout(source)
    right = convert_tf_inception(layout)
    assert feature_agreement(TFPort(source), right) == pytest.approx(1.0, abs=1e-4)
    # a source stored in another order whose shapes still fit: Mixed_6b's two (128, 128, 1, 7) convolutions swapped
    a, b = "Mixed_6b.branch7x7_2", "Mixed_6b.branch7x7dbl_3"
    wrong = dict(right)
    for suffix in ("conv.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        wrong[f"{a}.{suffix}"], wrong[f"{b}.{suffix}"] = right[f"{b}.{suffix}"], right[f"{a}.{suffix}"]
    assert feature_agreement(TFPort(source), wrong) < 0.8


def test_refuses_what_is_not_the_tensorflow_layout(source):
    layout = tf_layout(source)
    keys = list(layout)
    swapped = {k: layout[k] for k in keys[4:8] + keys[:4] + keys[8:]}  # first two convolutions in each other's place
    with pytest.raises(ConfigError, match="shape"):
        convert_tf_inception(swapped)
    with pytest.raises(ConfigError, match="convolutions"):
        convert_tf_inception({k: layout[k] for k in keys[:-4]})
    with pytest.raises(ConfigError, match="lacks"):
        convert_tf_inception({k: v for k, v in layout.items() if k != "net.layers.c3.var"})


def save_port(layout: dict, path) -> None:
    """A TorchScript file holding ``layout`` under the port's module names (no forward: nothing to compare)."""
    root = torch.nn.Module()
    root.net = torch.nn.Module()
    root.net.layers = torch.nn.Module()
    for i in range(len(layout) // 4):
        holder = torch.nn.Module()
        for s in ("weight", "beta", "mean", "var"):
            holder.register_buffer(s, layout[f"net.layers.c{i}.{s}"])
        setattr(root.net.layers, f"c{i}", holder)
    torch.jit.save(torch.jit.script(root), str(path))


def test_import_weights_records_provenance_and_loads_into_c2(source, tmp_path):
    from lungdr.config import TransferConfig
    from lungdr.models.transfer import InceptionTransfer

    src = tmp_path / "inception-2015-12-05.pt"
    save_port(tf_layout(source), src)
    data, record = import_weights(src.read_bytes(), src.name)
    assert record["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["tensors"] == 94 * 6
    assert record["feature_agreement"] is None  # this stand-in cannot run
    out = tmp_path / "inception_v3_imagenet.pt"
    out.write_bytes(data)
    clf = InceptionTransfer(TransferConfig(input_size=75, weights=str(out), freeze_first=16, finetune_last=0))
    net = clf.build()
    assert clf.metadata["weights_source"] == f"file:{out.name} sha256:{record['sha256'][:16]}"
    torch.testing.assert_close(net.backbone.Mixed_7c.branch_pool.conv.weight, source.Mixed_7c.branch_pool.conv.weight)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "lungdr.cli", "import-weights", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_weights_and_provenance_and_rejects_other_files(source, tmp_path):
    src = tmp_path / "port.pt"
    save_port(tf_layout(source), src)
    proc = cli(src, tmp_path / "w" / "inception.pt")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "w" / "inception.pt.json").read_text())
    assert record == {k: v for k, v in json.loads(proc.stdout).items() if k != "out"}
    assert record["sha256"] == hashlib.sha256((tmp_path / "w" / "inception.pt").read_bytes()).hexdigest()
    bad = tmp_path / "not_torchscript.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    proc = cli(bad, tmp_path / "o.pt")
    assert proc.returncode == 2 and "TorchScript" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.pt").exists()
