"""Import ImageNet Inception-v3 weights kept in TensorFlow's layout, for sites where torchvision's download is
unreachable (``lungdr import-weights``; C2 then loads the result as ``transfer.weights: <file>``).

Source: Google's Inception-v3 of 2015-12-05 (TensorFlow, trained on ImageNet; the network FID is computed with),
as the TorchScript port NVIDIA's GAN metrics use (``inception-2015-12-05.pt``). Its 94 convolutions have the
shapes and the order of torchvision's ``Inception3`` (auxiliary head off), each followed by a BatchNorm without a
scale (TensorFlow's ``scale=False``), stored as ``<conv>.weight, .beta, .mean, .var``. ``convert_tf_inception``
maps them in order onto torchvision's names (BatchNorm weight 1, bias beta; both use eps 0.001), checking every
shape; the 1008-class head is not imported (C2 replaces the head anyway).

What stays different: the TensorFlow graph's average pools leave padding out and its last block max-pools, so the
two networks' pooled features agree closely, not exactly (``feature_agreement``: 0.86; an import below
``MIN_AGREEMENT`` is refused); fine-tuning absorbs that. Like torchvision's own Inception-v3 weights (also a port
of Google's), these expect pixels in [-1, 1].
"""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Mapping

import torch
from torchvision.models import inception_v3
from torchvision.models.inception import BasicConv2d

from lungdr.errors import ConfigError

TF_SUFFIXES = ("weight", "beta", "mean", "var")
MIN_AGREEMENT = 0.5  # the real file: 0.86 mapped right, 0.18 with two same-shape convolutions swapped
FORMAT = "tf-inception-2015-12-05"


def torchvision_convs(net: torch.nn.Module) -> list[str]:
    """Names of the ``BasicConv2d`` modules of a torchvision Inception3 in registration order, which is the order
    of TensorFlow's graph (branches as Google's blocks list them; ``feature_agreement`` checks the result)."""
    return [name for name, m in net.named_modules() if isinstance(m, BasicConv2d) and not name.startswith("AuxLogits")]


def tf_convs(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Prefixes of the TensorFlow-layout conv + scale-free BatchNorm groups, in stored order."""
    prefixes = [k[: -len(".weight")] for k in state if k.endswith(".weight")]
    incomplete = [p for p in prefixes if any(f"{p}.{s}" not in state for s in TF_SUFFIXES)]
    if incomplete:
        raise ConfigError(f"not a TensorFlow-layout Inception-v3: {incomplete[0]} lacks one of {TF_SUFFIXES}")
    return prefixes


def convert_tf_inception(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ``Inception3`` state dict (body only, no ``fc``) from the TensorFlow layout; refuses any
    count or shape mismatch."""
    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    targets, sources = torchvision_convs(net), tf_convs(state)
    if len(sources) != len(targets):
        raise ConfigError(f"not a TensorFlow-layout Inception-v3: {len(sources)} convolutions, expected {len(targets)}")
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(sources, targets):
        weight, own = state[f"{src}.weight"], net.get_submodule(dst)
        if tuple(weight.shape) != tuple(own.conv.weight.shape):
            raise ConfigError(f"not a TensorFlow-layout Inception-v3: {src} has shape {tuple(weight.shape)}, "
                              f"{dst} needs {tuple(own.conv.weight.shape)}")
        beta = state[f"{src}.beta"].float()
        out[f"{dst}.conv.weight"] = weight.float().clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(beta)
        out[f"{dst}.bn.bias"] = beta.clone()
        out[f"{dst}.bn.running_mean"] = state[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = state[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def read_torchscript(data: bytes) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit.load; the port exists only as TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
    except RuntimeError as exc:
        raise ConfigError(f"not a TorchScript file: {str(exc).splitlines()[0]}") from exc


def pool_features(module: torch.nn.Module, converted: dict[str, torch.Tensor], x: torch.Tensor) -> tuple:
    """``(source features, torchvision features)`` of ``x`` (N, 3, 299, 299) in [-1, 1]; the source module must
    expose the TorchScript port's ``net.layers`` (the 2048-d pooled output)."""
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
    net.load_state_dict(converted, strict=False)
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        return module.net.layers(x).reshape(len(x), -1), net.eval()(x)


def feature_agreement(module: torch.nn.Module, converted: dict[str, torch.Tensor], n: int = 8, seed: int = 0) -> float:
    """Correlation of how the two networks' pooled features vary across ``n`` smooth random images (each feature
    centred over the images): 0.86 for the real file mapped right (the pooling differences above), 0.18 with two
    same-shape convolutions swapped."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 19, 19, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=(299, 299), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    a, b = ((f - f.mean(0)).flatten() for f in pool_features(module, converted, x.contiguous()))
    return float((a * b).sum() / (a.norm() * b.norm()))


def import_weights(data: bytes, source_name: str) -> tuple[bytes, dict]:
    """``(state-dict bytes for transfer.weights, provenance record)`` from a TorchScript port's bytes."""
    module = read_torchscript(data)
    converted = convert_tf_inception(module.state_dict())
    try:
        agreement = feature_agreement(module, converted)
    except (AttributeError, RuntimeError, NotImplementedError):  # a file without the port's runnable ``net.layers``
        agreement = None
    if agreement is not None and agreement < MIN_AGREEMENT:
        raise ConfigError(f"converted Inception-v3 disagrees with its source (feature correlation {agreement:.2f} < "
                          f"{MIN_AGREEMENT}): not the 2015-12-05 layout")
    buf = io.BytesIO()
    torch.save(converted, buf)
    out = buf.getvalue()
    record = {"format": FORMAT, "source": source_name, "source_sha256": hashlib.sha256(data).hexdigest(),
              "sha256": hashlib.sha256(out).hexdigest(), "tensors": len(converted), "feature_agreement": agreement,
              "head": "not imported (C2 adds its own 2-class head)", "input_range": "[-1, 1]"}
    return out, record
