"""Every stage's settings as frozen dataclasses, one place for defaults, YAML in and out.

``load_config(path)`` reads a YAML file whose top-level keys are the fields of ``LungdrConfig``
(``preprocess``, ``augment``, ``segmenter``, ``pretrain``, ``svm``, ``transfer``, ``cnn3d``, ``fusion``, ``score``,
``serve``); any key left out keeps its default, an unknown key is an error.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from lungdr.errors import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 256  # N of the N x N letterboxed image (the paper uses 512)
    equalization: str = "global"  # "global" (paper's CDF mapping) | "clahe" | "none"
    clahe_clip: float = 2.0
    clahe_tiles: int = 8


@dataclass(frozen=True)
class AugmentConfig:
    translate: float = 0.06  # fraction of the side
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.8, 1.2)
    aspect: tuple[float, float] = (0.85, 1.15)
    crop: float = 0.1  # random crop of up to this fraction per side, resized back
    p_crop: float = 0.3
    elastic_alpha: float = 0.03  # displacement amplitude, fraction of the side
    elastic_sigma: float = 0.05  # Gaussian smoothing of the field, fraction of the side
    p_elastic: float = 0.5
    gamma: tuple[float, float] = (0.6, 1.6)  # image only
    contrast: tuple[float, float] = (0.6, 1.4)  # image only
    noise_std: float = 0.02  # image only
    p_border: float = 0.0  # probability of bright collimator-like bands on 1-3 sides (image only, off the lungs)
    border_width: float = 0.12  # widest band, fraction of the side
    fill: tuple[float, float] = (0.0, 0.0)  # grey level drawn for pixels the geometry pulls from outside the image


TRAIN_PRECISIONS = ("fp32", "bf16", "auto")  # auto: bf16 where the hardware computes it (lungdr.device.native_bf16)


def check_train_precision(section: str, precision: str) -> None:
    if precision not in TRAIN_PRECISIONS:
        raise ConfigError(f"{section}.train_precision must be one of {TRAIN_PRECISIONS}, got {precision!r}")


@dataclass(frozen=True)
class SegmenterConfig:
    size: int = 256
    base: int = 16  # 64 in the paper
    batch_norm: bool = True
    optimizer: str = "adam"  # "adam" | "sgd" (momentum 0.99 as in the paper)
    lr: float = 1e-3
    momentum: float = 0.99
    epochs: int = 30
    batch_size: int = 8
    val_fraction: float = 0.2
    seed: int = 0
    threshold: float = 0.5
    pseudo_label_min_quality: float = 0.6
    pseudo_per_epoch: int = 0  # > 0: each epoch adds this many pseudo-masked images, drawn afresh (0 = all of them)
    lr_schedule: str = "cosine"  # "cosine" (to ~0 over the epochs) | "constant"
    ema_decay: float = 0.0  # > 0: validate and ship an exponential moving average of the weights (e.g. 0.995)
    tta_scales: tuple[float, ...] = ()  # test-time zooms averaged with the plain pass (e.g. (0.9, 1.1)); () = off
    weight_decay: float = 0.0  # decoupled weight decay (AdamW / SGD) when > 0
    bce_weight: float = 0.5  # loss = bce_weight * BCE + (1 - bce_weight) * (1 - soft Dice)
    # > 0: each pixel's BCE weighs 1 + boundary_weight * exp(-d^2 / (2 boundary_sigma^2)), d = its distance (px) to the
    # lung boundary (Ronneberger et al.'s border weighting; they used 10 and 5); 0 = off
    boundary_weight: float = 0.0
    boundary_sigma: float = 5.0
    init_weights: str = ""  # `lungdr pretrain-segmenter` output to start from (folder or s3://); "" = random weights
    # training speed: "bf16" runs the forward pass under bfloat16 autocast (weights, loss, optimiser and validation stay
    # fp32; ~1.8x on CPUs with AVX512-BF16 / AMX and on GPUs, slower on CPUs without); channels_last lays activations
    # out NHWC (~1.3x on CPU). Neither changes what the bundle holds (fp32 weights).
    train_precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self):
        if self.boundary_weight < 0 or self.boundary_sigma <= 0:
            raise ConfigError(f"segmenter.boundary_weight must be >= 0 and boundary_sigma > 0, got "
                              f"{self.boundary_weight} and {self.boundary_sigma}")
        check_train_precision("segmenter", self.train_precision)


PAINT_FILLS = ("noise", "blur")


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised U-Net pre-training on unlabelled films (``lungdr.segmentation.pretrain``)."""

    epochs: int = 4
    batch_size: int = 8
    lr: float = 1e-3
    p_intensity: float = 0.9  # random monotone intensity curve (inverted half of the time)
    p_shuffle: float = 0.5  # pixels shuffled inside small random windows
    p_paint: float = 0.9  # boxes painted over: inside (in-painting) or, half of the time, outside them
    paint_fill: str = "noise"  # "noise" (uniform, as Models Genesis) | "blur" (a heavy blur of the film)
    seed: int = 0

    def __post_init__(self):
        if self.paint_fill not in PAINT_FILLS:
            raise ConfigError(f"pretrain.paint_fill must be one of {PAINT_FILLS}, got {self.paint_fill!r}")


VIEWS = ("letterbox", "square", "lungs")  # what a classifier sees of the film (lungdr/transforms.py: classifier_view)


def check_view(view: str) -> None:
    if view not in VIEWS:
        raise ConfigError(f"view must be one of {VIEWS}, got {view!r}")


INTENSITIES = ("film", "lungs")  # a classifier's grey levels: as preprocessed, or equalized over the lung box


def check_intensity(intensity: str) -> None:
    if intensity not in INTENSITIES:
        raise ConfigError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")


def gamma_factor(choice: str | float) -> float | None:
    """An ``svm.gamma`` entry as a multiple of scikit-learn's "scale" ("scale" -> 1, "scale*F" -> F), or None for
    an absolute number; anything else is a ConfigError."""
    if isinstance(choice, str):
        head, star, factor = choice.replace(" ", "").partition("*")
        try:
            value = float(factor) if star else 1.0
        except ValueError:
            value = 0.0
        if head == "scale" and 0 < value < math.inf:
            return value
    else:
        try:
            if not isinstance(choice, bool) and 0 < float(choice) < math.inf:
                return None
        except (TypeError, ValueError):
            pass
    raise ConfigError(f'svm.gamma entries are "scale", "scale*F" (F > 0) or a positive number, got {choice!r}')


CONTEXT_REGIONS = ("image", "lung_box")  # where C1's mask-free context features are taken


@dataclass(frozen=True)
class SVMConfig:
    orientations: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0)
    scales: tuple[int, ...] = (7, 9, 11, 13, 15, 17)
    feature_size: int = 128  # image side the Gabor bank runs on
    regional: bool = True  # also pool per lung zone (left/right x upper/middle/lower), not only the whole field
    hist_bins: int = 16  # > 0: append the lung-intensity histogram with this many bins
    context_grid: int = 6  # > 0: append mask-free whole-image texture and a grid x grid map of it (0: lung field only)
    context_region: str = "image"  # where that context is taken: "image" (whole) | "lung_box" (the lung mask's box)
    C: tuple[float, ...] = (1.0, 10.0, 100.0)
    gamma: tuple[str | float, ...] = ("scale*0.5", "scale", "scale*2")  # x sklearn "scale", or absolute; CV picks
    pca: tuple[float, ...] = (0.95,)  # fraction of variance (float < 1) or component count
    cv_folds: int = 10
    view: str = "letterbox"  # "square": film stretched to the square, bars dropped; "lungs": framed around the lungs
    intensity: str = "film"  # "lungs": equalized again over the lung box (grey levels that ignore the framing)
    seed: int = 0

    def __post_init__(self):
        check_view(self.view)
        check_intensity(self.intensity)
        for choice in self.gamma:
            gamma_factor(choice)
        if self.context_region not in CONTEXT_REGIONS:
            raise ConfigError(f"svm.context_region must be one of {CONTEXT_REGIONS}, got {self.context_region!r}")
        if self.context_grid < 0 or self.context_grid * 4 > self.feature_size:
            raise ConfigError(f"svm.context_grid must be 0 or a grid of cells of at least 4 px on the "
                              f"{self.feature_size} px feature image, got {self.context_grid}")


LR_SCHEDULES = ("constant", "cosine")
POOLINGS = ("logit", "mean")
OOD_STATISTICS = ("mask", "image")  # model-free OOD spaces (lungdr/ood.py), in the order they were added
TOPOLOGIES = ("composed", "single")


def check_lr_schedule(name: str) -> None:
    if name not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {name!r}")


@dataclass(frozen=True)
class TransferConfig:
    input_size: int = 299  # aux head only at >= 299
    weights: str = "imagenet"  # "imagenet" (torchvision enum) | "none" | a local / s3:// state-dict path
    freeze_first: int = 10  # n: leading Inception blocks frozen
    finetune_last: int = 7  # m: trailing blocks tuned (with the new head)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant" | "cosine" (per epoch, from lr down to ~0 at the last epoch)
    batch_size: int = 16
    epochs: int = 5
    augment: bool = True
    view: str = "letterbox"  # "square": film stretched to the square, bars dropped; "lungs": framed around the lungs
    intensity: str = "film"  # "lungs": equalized again over the lung box (grey levels that ignore the framing)
    seed: int = 0
    train_precision: str = "fp32"  # "bf16": training forward passes under bfloat16 autocast (as segmenter.train_precision)
    channels_last: bool = False  # NHWC / NDHWC training layout (~1.2x on CPU; with bf16 ~1.8x on AVX512-BF16 CPUs)

    def __post_init__(self):
        check_lr_schedule(self.lr_schedule)
        check_view(self.view)
        check_intensity(self.intensity)
        check_train_precision("transfer", self.train_precision)


@dataclass(frozen=True)
class CNN3DConfig:
    depth: int = 7  # frames of the DR pseudo-volume
    size: int = 64  # in-plane side of the volume fed to the network
    ct_shape: tuple[int, int, int] = (16, 64, 64)  # (z, y, x) CT volumes are resampled to
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant" | "cosine" (per epoch; CT pre-training and DR epochs each)
    dropout: float = 0.5
    batch_size: int = 16
    epochs: int = 10
    augment: bool = False  # geometric augmentation of the training volumes (one draw for all frames of a volume)
    view: str = "letterbox"  # "square": film stretched to the square, bars dropped; "lungs": framed around the lungs
    intensity: str = "film"  # "lungs": equalized again over the lung box (grey levels that ignore the framing)
    seed: int = 0
    train_precision: str = "fp32"  # "bf16": training forward passes under bfloat16 autocast (as segmenter.train_precision)
    channels_last: bool = False  # NHWC / NDHWC training layout (~1.2x on CPU; with bf16 ~1.8x on AVX512-BF16 CPUs)

    def __post_init__(self):
        check_lr_schedule(self.lr_schedule)
        check_view(self.view)
        check_intensity(self.intensity)
        check_train_precision("cnn3d", self.train_precision)


@dataclass(frozen=True)
class FusionConfig:
    margin_threshold: float = 0.2  # confidence-weighted vote margin below this = no clear majority
    review_rate: float = 0.0  # > 0: training sets margin_threshold to this quantile of the validation margins
    tta_rounds: int = 4
    ood_quantile: float = 0.99  # 1 - the OOD guard's in-distribution false-alarm rate (split over its two families)
    # model-free OOD spaces beside the classifiers' embeddings (lungdr/ood.py): lung-mask shape, acquisition
    ood_statistics: tuple[str, ...] = OOD_STATISTICS
    pooling: str = "logit"  # fused p_abnormal: "logit" = weighted mean log-odds, "mean" = weighted mean probability

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ConfigError(f"fusion.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        unknown = sorted(set(self.ood_statistics) - set(OOD_STATISTICS))
        if unknown:
            raise ConfigError(f"fusion.ood_statistics: unknown spaces {unknown} (known: {', '.join(OOD_STATISTICS)})")


@dataclass(frozen=True)
class ScoreConfig:
    batch_size: int = 16
    decode_concurrency: int = 0  # max concurrent read/decode tasks; 0 = let Ray Data decide
    decode_cpus: float = 0.5  # CPUs reserved per read/decode task
    segment_actors: int = 1  # segmentation actor pool size
    classify_actors: int = 1  # classify + fusion actor pool size
    num_gpus_per_actor: float | None = None  # None = auto (share the cluster's GPUs across the pools), 0 = CPU
    cpus_per_actor: float = 0.5
    max_restarts: int = 3  # actor restarts (and task retries) after a worker dies
    rows_per_part: int = 1000  # rows per Parquet part file: the unit a killed run can lose and resume
    write_masks: bool = False  # lung masks as <output>/_masks/<id>.png at each input's own size
    progress_bars: bool = True


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 32.0
    token_env: str | None = None
    replicas: int = 1  # per model deployment (the minimum when autoscaling)
    max_replicas: int = 0  # > replicas: autoscale each model deployment (and the ingress) up to this
    target_ongoing_requests: float = 8.0  # autoscaling target per model replica
    ingress_replicas: int = 1  # HTTP + request pipeline (decode, preprocess, vote) replicas
    max_ongoing_requests: int = 64  # per replica; must be >= max_batch_size for batches to fill
    max_batch_size: int = 8  # requests per ingress batch; images per model batch
    batch_wait_timeout_s: float = 0.0  # an idle stage waits this for company (three stages in a row)
    adaptive_wait: bool = True  # while a batch runs, the next one collects until it is expected to end
    access_log: bool = True  # Serve's per-request access log of the ingress (internal hops never log)
    num_cpus: float = 0.0  # per ingress / model replica (0 lets it share the node's CPUs)
    num_gpus: float = 0.0  # per ingress / model replica; > 0 runs the models on CUDA
    model_retry_s: float = 20.0  # a deployment call is retried this long while a dead replica is replaced
    topology: str = "composed"  # composed: a deployment per model, each scaled on its own; single: the ingress
    #                             replica runs all four models itself (no model hops: lowest latency on a small node)

    def __post_init__(self):
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"serve.topology must be one of {TOPOLOGIES}, got {self.topology!r}")


@dataclass(frozen=True)
class LungdrConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    cnn3d: CNN3DConfig = field(default_factory=CNN3DConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def to_dict(cfg: Any) -> dict:
    """Plain dict (tuples become lists) for JSON/YAML."""
    return _plain(dataclasses.asdict(cfg))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def from_dict(cls: type, data: dict | None) -> Any:
    """Build dataclass ``cls`` from a (possibly partial, nested) dict; unknown keys raise ConfigError."""
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        current = getattr(defaults, name)
        if is_dataclass(current):
            kwargs[name] = from_dict(type(current), value)
        elif isinstance(current, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return dataclasses.replace(defaults, **kwargs)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> LungdrConfig:
    """Defaults, then the YAML file (if any), then ``overrides`` (a nested dict)."""
    data: dict = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping")
        data = loaded
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return resolve_local_paths(from_dict(LungdrConfig, data))


# (section, field) naming a file or folder; keywords that are not paths
PATH_FIELDS = (("transfer", "weights"), ("segmenter", "init_weights"))
NOT_PATHS = ("", "imagenet", "none")


def resolve_local_paths(cfg: LungdrConfig) -> LungdrConfig:
    """Relative local paths made absolute against the directory the command runs in, so Ray workers (whose
    working directory differs) read the same file."""
    for section, name in PATH_FIELDS:
        sub = getattr(cfg, section)
        value = getattr(sub, name)
        if value not in NOT_PATHS and "://" not in value and not Path(value).is_absolute():
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{name: str(Path(value).resolve())})})
    return cfg


def dump_config(cfg: LungdrConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
