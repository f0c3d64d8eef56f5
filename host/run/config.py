"""Run configuration: TOML files validated once into typed dataclasses.

A config file has one table per section; every key is optional and falls back to the default
below. Unknown sections or keys are errors (a typo must not silently run the default), and so
is a value of another type than its field's annotation (a bool is true or false, never "no" or 1;
an integer is a valid float; floats are finite), checked in one place for every section::

    seed = 0
    [data]
    source = "cifar10"
    [pretrain]
    arch = "smallnet"
    epochs = 8
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from entropi.common.dtypes import (
    DEFAULT_MIN_COSINE,
    DEFAULT_QUANTIZE,
    PRUNE_METHODS,
    QUANTIZE,
    QUANTIZE_DTYPE,
)
from entropi.device.budget import format_size, parse_size, plan_memory
from entropi.device.config import TrainConfig
from entropi.device.errors import BudgetError, TrainConfigError

from ..deployment.runtimes import RUNTIMES
from ..errors import ConfigError
from ..ladder.alphas import planned_rungs
from ..selection.criteria import CRITERIA, DEFAULT_CRITERION, Criterion
from ..selection.entropy import DEFAULT_LEVELS, LevelsError, check_levels
from ..selection.rules import DEFAULT_RULE, DEFAULT_TIE_SE, RULES

__all__ = [
    "ConfigError",
    "DEFAULT_CALIBRATION_IMAGES",
    "DEFAULT_VERIFY_IMAGES",
    "DataConfig",
    "DeviceTrainConfig",
    "EntropyConfig",
    "ExportConfig",
    "MAX_RUNGS",
    "PretrainConfig",
    "ProbeConfig",
    "PruneConfig",
    "RunConfig",
    "SelectConfig",
    "apply_overrides",
    "config_to_toml",
    "load_config",
    "shipped_configs",
]


def _check_name(key: str, value: Any, known, what: str) -> None:
    """``value`` must be a name of the registry ``known`` (names listed in the error)."""
    if value not in known:
        raise ConfigError(f"{key} = {value!r} is not a known {what}; known: " + ", ".join(known))


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open=False, hi_open=False):
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if isinstance(value, bool) or not isinstance(value, int | float) or not (ok_lo and ok_hi):
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ConfigError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")


def _check_int(name: str, value: Any, lo: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


_KINDS = {
    bool: "a boolean (true/false)",
    int: "an integer",
    float: "a finite number",
    str: "a string",
}
"""Scalar field type -> how a message names it."""


def _is_kind(value: Any, kind: Any) -> bool:
    """``value`` is a plain TOML value of the annotated ``kind`` (a bool is no number, a string
    no bool, an integer is a float; every float is finite)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_is_kind(value, k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_is_kind(v, item) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        try:  # TOML integers have no size limit: 10**400 overflows a float
            return number and math.isfinite(value)
        except OverflowError:
            return False
    if kind is str:  # a lone surrogate (from a mis-decoded argv) is no text TOML can hold
        return isinstance(value, str) and not any("\ud800" <= c <= "\udfff" for c in value)
    raise TypeError(f"config fields cannot be of type {kind!r}")  # a new field's type: add it


def _kind_name(kind: Any) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return f"a list of {_kind_name(item).removeprefix('a ')}s, e.g. [{_KIND_EXAMPLES[item]}]"
    return _KINDS[kind]


_KIND_EXAMPLES = {bool: "true", int: "1", float: "0.5", str: '"a", "b"'}


def _check_types(cls: type, values: dict[str, Any], prefix: str) -> None:
    """Every value of ``values`` has the type its field of ``cls`` is annotated with (sections,
    themselves dataclasses, are checked when built), else a ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            continue
        if not _is_kind(value, kind):
            raise ConfigError(f"{prefix}{key} must be {_kind_name(kind)}, got {value!r}")


@dataclass
class DataConfig:
    roots: list[str] = field(default_factory=lambda: ["../shared/datasets"])
    """folders searched for named datasets, after $ENTROPI_DATA and before the data home
    ($XDG_DATA_HOME/entropi or ~/.local/share/entropi); a relative one is relative to the
    config file's folder (a shipped config's: to the source checkout and the working
    directory; a --set one: to the working directory), made absolute when the config loads."""
    source: str = "cifar10"
    """source (pre-training) dataset spec: cifar10, cifar100[:coarse], pacs[:DOMAIN,...],
    imagefolder:PATH or npz:PATH."""
    target: str = "cifar100"
    """target (transfer) dataset spec (same forms as source)."""
    test_fraction: float = 0.2
    """test share of each class for an imagefolder/npz without a test split (seeded by seed)."""
    source_per_class: int = 0
    """source training images per class (0 = all). Like the target caps, it belongs to its
    spec: --source / --set data.source=... drops it unless set along."""
    source_test_per_class: int = 0
    """source test images per class that measure each rung's source accuracy (0 = all): the
    accuracy is reported, never used to pick, and on the CPU every rung spends a forward pass
    over them. Dropped with a new source like source_per_class."""
    target_train_per_class: int = 0
    """target training images per class used for entropy and the probe (0 = all). It belongs
    to the target it was set with: --target / --set data.target=... (another target) drops it
    unless set along, so your own folder is used whole unless you ask for a cap."""
    target_test_per_class: int = 0
    """target test images per class for the probe accuracy (0 = all); dropped with a new
    target like target_train_per_class."""
    target_fraction: float = 1.0
    """share of each class of the target training split kept (in (0, 1]; 1 = all): the
    low-data regime, e.g. 0.01 = "1% of the target". A seeded (by seed) stratified draw, the
    same images for the same seed in every run and stage, and nested (the 1% draw is part of
    the 10% draw of the same seed). Set it or target_train_per_class, not both."""
    download: bool = False
    """download official archives (CIFAR) into the data home when found nowhere."""
    root: str = ""
    """deprecated: one folder, read as roots = [root]."""
    target_domains: list[str] = field(default_factory=list)
    """deprecated: PACS domains, read as target = "pacs:DOMAIN,..."."""

    def __post_init__(self) -> None:
        # lazy: keeps this module importable without torch
        from ..data import DataError, parse_spec

        if self.root:
            if self.roots != ["../shared/datasets"]:
                raise ConfigError("set data.roots only; data.root is its old one-folder form")
            self.roots, self.root = [self.root], ""
        if not isinstance(self.roots, list) or not all(
            isinstance(r, str) and r.strip() for r in self.roots
        ):
            raise ConfigError(
                f'data.roots must be a list of folder names, e.g. ["data"], got {self.roots!r}'
            )
        if self.target_domains:
            if self.target != "pacs":
                raise ConfigError(
                    f"data.target_domains only applies to target = 'pacs' (got "
                    f'{self.target!r}); write target = "pacs:{",".join(self.target_domains)}"'
                )
            self.target, self.target_domains = "pacs:" + ",".join(self.target_domains), []
        for name in ("source", "target"):
            try:
                parse_spec(getattr(self, name), must_exist=False)
            except DataError as e:
                raise ConfigError(f"data.{name}: {e}") from e
        _check_range("data.test_fraction", self.test_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        caps = ("source_per_class", "source_test_per_class")
        for name in caps + ("target_train_per_class", "target_test_per_class"):
            _check_int(f"data.{name}", getattr(self, name), lo=0)
        _check_range("data.target_fraction", self.target_fraction, 0.0, 1.0, lo_open=True)
        if self.target_fraction < 1 and self.target_train_per_class > 0:
            raise ConfigError(
                f"set data.target_fraction ({self.target_fraction}) or "
                f"data.target_train_per_class ({self.target_train_per_class}), not both: "
                "set target_train_per_class = 0 for a fraction of the whole training split"
            )


@dataclass
class PretrainConfig:
    arch: str = "resnet18"
    """encoder architecture: a name of :data:`entropi.host.ladder.models.ARCHITECTURES`."""
    epochs: int = 90
    batch_size: int = 128
    lr: float = 0.1
    """peak SGD learning rate (per batch of batch_size), cosine-decayed to 0."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    init: str = ""
    """state dict to start rung 0 from (a .pt file): entropi's encoder or classifier layout, or a
    torchvision-layout ResNet18 (onto resnet18_imagenet exactly; onto resnet18 all but the stem)
    or MobileNetV3-small (onto mobilenetv3_small exactly); empty = random init. With epochs = 0
    the pre-training is skipped."""
    input_size: int = 32
    """side of the square encoder input in pixels: source and target images are converted to it
    (device/imageprep.py), and export, bundle and device follow it."""
    sync_bn: bool = False
    """under torchrun with several processes: batch norms use the statistics of the whole
    global batch (torch SyncBatchNorm; CUDA only) instead of each process's slice of it."""
    regularizer: str = "none"
    """representation-entropy term of the source loss (seed paper 000, host/ladder/regularizers.py):
    "none" (cross-entropy), "vne" (L_CE - gamma * S(C_auto), von Neumann entropy of the
    normalized penultimate features) or "nce" (L_CE - gamma * H_NCE, InfoNCE between two
    augmented views of each image). Every source training uses it: rung 0 and the retraining
    of each pruned rung."""
    gamma: float = 0.1
    """weight of the regularizer (>= 0; ignored with regularizer = "none")."""
    nce_temperature: float = 0.1
    """temperature of the InfoNCE cosine logits (> 0; used by regularizer = "nce")."""
    threads: int = 0
    """on the CPU, torch's intra-op threads for every source training (rung 0 and each rung's
    retraining); 0 = torch's default (the cores, or OMP_NUM_THREADS). The thread count changes
    the last bits of the weight gradients' sums, so each count trains a slightly different ladder;
    a fixed count trains the same ladder on any machine of the same CPU kind, whatever its cores
    or OMP_NUM_THREADS (the quickstart pins 2: its pick is the same at OMP_NUM_THREADS=1)."""

    def __post_init__(self) -> None:
        # lazy: keeps this module importable without torch
        from ..ladder.models import ARCHITECTURES

        _check_name("pretrain.arch", self.arch, sorted(ARCHITECTURES), "architecture")
        _check_int("pretrain.epochs", self.epochs, lo=0 if self.init else 1)
        _check_int("pretrain.input_size", self.input_size, lo=8)
        if self.input_size > 512:
            raise ConfigError(f"pretrain.input_size must be in [8, 512], got {self.input_size}")
        if not isinstance(self.init, str) or (self.init and not self.init.strip()):
            raise ConfigError(f"pretrain.init must be a path string (or empty), got {self.init!r}")
        _check_int("pretrain.batch_size", self.batch_size)
        _check_int("pretrain.threads", self.threads, lo=0)
        if self.threads > MAX_THREADS:
            raise ConfigError(f"pretrain.threads must be in [0, {MAX_THREADS}], got {self.threads}")
        _check_range("pretrain.lr", self.lr, 0.0, 10.0, lo_open=True)
        _check_range("pretrain.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _check_range("pretrain.weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("pretrain.label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        # lazy: keeps this module importable without torch
        from ..ladder.regularizers import check_regularizer

        check_regularizer(self.regularizer, self.gamma, self.nce_temperature, prefix="pretrain.")


@dataclass
class PruneConfig:
    keep_per_round: float = 0.75
    """fraction of the remaining weights each round keeps (the paper removes 25%)."""
    alpha_min: float = 0.005
    """stop at the last rung whose kept fraction alpha is >= alpha_min."""
    retrain_epochs: int = 10
    """source epochs of retraining after each prune."""
    lr: float = 0.05
    """peak learning rate of each retraining (cosine)."""
    layer_floor: float = 0.0
    """every layer keeps at least layer_floor x alpha of its weights (no layer is emptied);
    0 = the paper's purely global magnitude pruning."""
    method: str = "magnitude"
    """"magnitude": the paper's unstructured global magnitude masks; "channel": whole channels
    removed (Torch-Pruning), each rung a smaller dense network with alpha of the prunable
    weights, which every runtime (TFLite Micro included) runs smaller and faster."""

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise ConfigError(
                f"prune.method must be one of {', '.join(PRUNE_METHODS)}, got {self.method!r}"
            )
        _check_range(
            "prune.keep_per_round", self.keep_per_round, 0.0, 1.0, lo_open=True, hi_open=True
        )
        _check_range("prune.layer_floor", self.layer_floor, 0.0, 1.0)
        _check_range("prune.alpha_min", self.alpha_min, 0.0, 1.0, lo_open=True)
        _check_int("prune.retrain_epochs", self.retrain_epochs, lo=0)
        _check_range("prune.lr", self.lr, 0.0, 10.0, lo_open=True)


@dataclass
class EntropyConfig:
    levels: int = DEFAULT_LEVELS
    """quantization levels M (eqs. 2-6), in [2, 1024]; the paper uses 4."""

    def __post_init__(self) -> None:
        try:
            check_levels(self.levels)
        except LevelsError as e:
            raise ConfigError(f"entropy.{e}") from None


@dataclass
class SelectConfig:
    criterion: str = DEFAULT_CRITERION
    """how the rung is picked: a name of :data:`entropi.host.selection.criteria.CRITERIA` (`entropi
    criteria --list`); every criterion is scored and summarized either way. The default,
    "logme" with rule "smallest_tied" and tie_se 2, is the rule study's decision (docs/studies.md,
    "Selection rule study"); "entropy" is the paper's estimator, "subset_entropy" the label-free
    choice for a target without labels."""
    resamples: int = 100
    """bootstrap resamples of the target training set for the selection confidence and the
    smallest_tied rule's ties (0 = off, with rule = "argmax" only)."""
    rule: str = DEFAULT_RULE
    """how the criterion picks (:data:`entropi.host.selection.rules.RULES`): "argmax" (the paper's:
    the best value) or "smallest_tied" (the fewest non-zero weights among the rungs within
    tie_se paired-bootstrap standard errors of the best; needs resamples >= 2)."""
    tie_se: float = DEFAULT_TIE_SE
    """smallest_tied: how many paired-bootstrap standard errors below the best still tie."""

    def __post_init__(self) -> None:
        _check_name("select.criterion", self.criterion, sorted(CRITERIA), "selection criterion")
        _check_name("select.rule", self.rule, list(RULES), "selection rule")
        _check_range("select.tie_se", self.tie_se, 0.0, 100.0)
        _check_int("select.resamples", self.resamples, lo=0)
        if RULES[self.rule].needs_bootstrap and self.resamples < 2:
            raise ConfigError(
                f"select.rule = {self.rule!r} decides ties by a paired bootstrap: "
                f"select.resamples must be >= 2, got {self.resamples} (or pick by the "
                'best value alone: select.rule = "argmax")'
            )
        if self.resamples > MAX_RESAMPLES:  # each resample scores every rung again
            raise ConfigError(
                f"select.resamples must be in [0, {MAX_RESAMPLES}], got {self.resamples}"
            )

    @property
    def chosen_criterion(self) -> Criterion:
        """``criterion`` as its :class:`~entropi.host.selection.criteria.Criterion`."""
        return CRITERIA[self.criterion]


@dataclass
class ProbeConfig:
    epochs: int = 30
    """epochs of head training on the frozen target features."""
    batch_size: int = 128
    lr: float = 1e-3
    """Adam learning rate (features are standardized first)."""
    weight_decay: float = 1e-4
    repeats: int = 3
    """probe trainings per rung (seeds seed, seed + 1, ...): probe_accuracy is their mean and
    probe_accuracy_std their spread, the noise floor of any regret."""
    folds: int = 0
    """0: train on the target's training split, test on its test split. k >= 2: k-fold
    cross-validation over both pooled (stratified, seeded), every image tested once: for targets
    whose test split is too small to rank rungs (its binomial standard error is
    probe_accuracy_se). The criteria still see the training split only."""

    def __post_init__(self) -> None:
        _check_int("probe.repeats", self.repeats, lo=1)
        if self.repeats > MAX_REPEATS:  # each is a probe training per rung, seeded seed + k
            raise ConfigError(f"probe.repeats must be in [1, {MAX_REPEATS}], got {self.repeats}")
        _check_int("probe.folds", self.folds, lo=0)
        if self.folds == 1:
            raise ConfigError("probe.folds must be 0 (the test split) or at least 2, got 1")
        _check_int("probe.epochs", self.epochs)
        _check_int("probe.batch_size", self.batch_size)
        _check_range("probe.lr", self.lr, 0.0, 10.0, lo_open=True)
        _check_range("probe.weight_decay", self.weight_decay, 0.0, 1.0)


DEFAULT_VERIFY_IMAGES = 64
"""Real target images that verify the exported files; int8 and MCU files are checked on this
many even with ``[export] verify_images = 0`` (:attr:`ExportConfig.checked_images`)."""
DEFAULT_CALIBRATION_IMAGES = 256
"""Target training images that calibrate the int8 activation ranges."""


@dataclass
class ExportConfig:
    enabled: bool = True
    """export the selected rung (and bundle it for the device) at the end of `entropi run`."""
    formats: list[str] = field(default_factory=lambda: ["onnx", "tflite"])
    """encoder file formats: onnx and/or tflite (tflite needs the `tflite` extra)."""
    form: str = "compact"
    """encoder form in the device bundle: compact (dead channels removed, the rest stored
    sparse), sparse (every channel, pruned weights stored sparse: the smallest file) or
    compact-dense (dead channels removed, weights stored dense: read in place, the least RAM)."""
    verify_images: int = DEFAULT_VERIFY_IMAGES
    """real target images used (besides random inputs) to verify the exported files."""
    quantize: str = DEFAULT_QUANTIZE
    """"int8": also write full-integer int8 files (TFLite: int8 I/O; ONNX: QDQ) and bundle
    them for the device; "none": float32 only."""
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    """target training images (seeded draw) that calibrate the int8 activation ranges."""
    min_cosine: float = DEFAULT_MIN_COSINE
    """an int8 file whose features' mean cosine to the float encoder's on the verification
    images is below this is refused."""

    def __post_init__(self) -> None:
        # lazy: keeps this module importable without torch
        from entropi.export.formats import ENCODER_FORMS, FORMATS

        bad = [f for f in self.formats if f not in FORMATS]
        twice = len(set(self.formats)) < len(self.formats)
        if bad or twice or not self.formats:
            raise ConfigError(
                f"export.formats must be a non-empty subset of {sorted(FORMATS)} (each once), "
                f"got {self.formats!r}"
            )
        _check_name("export.form", self.form, list(ENCODER_FORMS), "encoder form")
        _check_int("export.verify_images", self.verify_images, lo=0)
        _check_name("export.quantize", self.quantize, list(QUANTIZE), "quantization dtype")
        _check_int("export.calibration_images", self.calibration_images, lo=1)
        _check_range("export.min_cosine", self.min_cosine, -1.0, 1.0)

    @property
    def dtype(self) -> str:
        """The dtype of the encoder the run deploys: ``quantize`` resolved ("none": float32)."""
        return QUANTIZE_DTYPE[self.quantize]

    @property
    def checked_images(self) -> int:
        """How many target test images check int8 and MCU files: ``verify_images``, or
        :data:`DEFAULT_VERIFY_IMAGES` when that is 0 (they are accepted on real images only)."""
        return self.verify_images or DEFAULT_VERIFY_IMAGES


@dataclass
class DeployConfig:
    """What the target device has for the encoder and the head: `entropi select` picks the best
    rung by the criterion among those whose encoder file plus head fit (host/deployment/fit.py)."""

    flash: str = ""
    """flash for the encoder file and the head (a size such as 300KB; empty: no limit)."""
    ram: str = ""
    """RAM for inference activations plus head training (a size; empty: no limit)."""
    runtime: str = "litert"
    """what runs the encoder: "litert" (a Linux board; every encoder form) or "tflm"
    (TensorFlow Lite Micro on a microcontroller: the MCU form, RAM = TFLM's measured arena)."""

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"deploy.runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}"
            )
        for key in ("flash", "ram"):
            value = getattr(self, key)
            if not isinstance(value, str):
                raise ConfigError(f'deploy.{key} must be a size such as "300KB", got {value!r}')
            if value == "":
                continue

            try:
                parse_size(value)
            except TrainConfigError as e:
                raise ConfigError(f"deploy.{key}: {e}") from None

    def limits(self) -> dict[str, int | None]:
        """``{"flash": bytes or None, "ram": bytes or None}`` (None: no limit)."""

        return {
            k: None if getattr(self, k) == "" else parse_size(getattr(self, k))
            for k in ("flash", "ram")
        }


@dataclass(frozen=True)
class DeviceTrainConfig(TrainConfig):
    """Head training on the device: the device runtime's :class:`TrainConfig` (one definition,
    one default per parameter; ``entropi-device train`` uses the same), plus the switch below.
    Its seed is the run's top-level ``seed``, not a key of this section."""

    enabled: bool = True
    """train the head with the numpy device runtime at the end of `entropi run`."""

    def __post_init__(self) -> None:
        super().__post_init__()  # parses the budget (a size, a number of bytes or "unlimited")
        budget = self.budget_bytes
        if budget is None:
            return

        try:  # the smallest loop there is: 1 feature x 2 classes, batch 1, fused update
            plan_memory(
                1,
                2,
                budget,
                max_batch_size=1,
                dtype=np.dtype(self.dtype),
                epochs=self.epochs,
                fused_update=True,
            )
        except BudgetError as e:
            defaults = DeviceTrainConfig.__dataclass_fields__
            raise ConfigError(
                f"device_train.budget = {self.budget!r} ({budget} B) cannot hold any head "
                f"training loop: even 1 feature x 2 classes over {self.epochs} epochs needs "
                f"{format_size(e.minimum_bytes)} (the per-epoch history is part of it); the real "
                "minimum grows with the encoder's feature width, the target's classes and the "
                f'epochs (the defaults are "{defaults["budget"].default}" and '
                f"{defaults['epochs'].default} epochs)"
            ) from None


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda"."""
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    device_train: DeviceTrainConfig = field(default_factory=DeviceTrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"name must be a non-empty string, got {self.name!r}")
        if "/" in self.name or "\\" in self.name or self.name.startswith("."):
            # `entropi run` writes to runs/NAME when no --out is given
            raise ConfigError(
                f"name must be a plain folder name (no '/', '\\' or leading '.'), got {self.name!r}"
            )
        _check_int("seed", self.seed, lo=0)
        if self.seed > MAX_SEED:
            # torch seeds are unsigned 64-bit, and rungs and probes use seed + their index
            raise ConfigError(f"seed must be in [0, {MAX_SEED}] (2**63 - 1), got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        _check_ladder(self.prune, self.pretrain.arch)

    @property
    def head_training(self) -> TrainConfig:
        """The device section as the runtime's TrainConfig, seeded with the run's seed."""
        fields = {
            f.name: getattr(self.device_train, f.name) for f in dataclasses.fields(TrainConfig)
        }
        return TrainConfig(**{**fields, "seed": self.seed})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["device_train"].pop("seed")
        return d

    def digest(self) -> str:
        """sha256 of the canonical TOML form (a stable config hash for provenance)."""
        return hashlib.sha256(config_to_toml(self).encode()).hexdigest()


MAX_THREADS = 1024
"""The most torch intra-op threads ``[pretrain] threads`` may ask for."""

MAX_RESAMPLES = 10_000
"""Most bootstrap resamples of the selection confidence (they are drawn as one resamples x n
index array; the shipped configs use 100)."""
MAX_REPEATS = 1000
"""Most probe repeats per rung (the shipped configs use 1 to 3)."""

MAX_SEED = 2**63 - 1
"""The largest seed: torch takes unsigned 64-bit seeds, and a rung or probe repeat ``k`` is
seeded with ``seed + k``, which must stay below 2**64."""

MAX_RUNGS = 64
"""The most rungs a ladder may plan (prune.keep_per_round and prune.alpha_min): each is a
checkpoint file, scored and probed; the shipped configs plan 8 to 20."""


def _check_ladder(prune: PruneConfig, arch: str) -> None:
    """At most :data:`MAX_RUNGS` rungs; the error estimates the disk use of the rung files."""
    n = planned_rungs(prune.keep_per_round, prune.alpha_min)
    if n <= MAX_RUNGS:
        return

    # lazy: keeps this module importable without torch
    from ..ladder.models import build_encoder, prunable_parameters

    encoder = build_encoder(arch)  # a rung file: float32 state dict + one bool per pruned weight
    state = sum(t.numel() for t in encoder.state_dict().values())
    rung_bytes = 4 * state + sum(p.numel() for _, p in prunable_parameters(encoder))
    size = n * rung_bytes
    disk = f"{size / 1024**3:.1f} GB" if size >= 1024**3 else format_size(size)
    fit = math.floor(1e4 * math.exp(math.log(prune.alpha_min) / (MAX_RUNGS - 1))) / 1e4
    raise ConfigError(
        f"prune.keep_per_round = {prune.keep_per_round} down to prune.alpha_min = "
        f"{prune.alpha_min} plans {n:,} rungs (about {disk} of {arch} "
        f"rung files), more than {MAX_RUNGS}: lower prune.keep_per_round (at most {fit:.4f} "
        f"for {MAX_RUNGS} rungs; the paper uses 0.75) or raise prune.alpha_min"
    )


_SECTIONS = {
    "data": DataConfig,
    "pretrain": PretrainConfig,
    "prune": PruneConfig,
    "entropy": EntropyConfig,
    "probe": ProbeConfig,
    "select": SelectConfig,
    "export": ExportConfig,
    "deploy": DeployConfig,
    "device_train": DeviceTrainConfig,
}
# keys a section's dataclass has but a config file may not set (with the reason)
_NOT_IN_FILE = {
    "device_train": {"seed": "head training uses the run's top-level `seed`"},
}


def _build(cls: type, values: dict[str, Any], where: str, prefix: str, hidden=None) -> Any:
    hidden = hidden or {}
    for key, why in hidden.items():
        if key in values:
            raise ConfigError(f"{key!r} cannot be set in {where}: {why}")
    names = {f.name for f in dataclasses.fields(cls)} - set(hidden)
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(names)}")
    _check_types(cls, values, prefix)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # the device's TrainConfig raises its own errors
        raise ConfigError(f"invalid {where}: {e}") from e


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a table of settings, got {type(raw).__name__}")
    top = {k: v for k, v in raw.items() if k not in _SECTIONS}
    sections = {}
    for key, cls in _SECTIONS.items():
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
        sections[key] = _build(cls, value, f"[{key}]", f"{key}.", _NOT_IN_FILE.get(key))
    return _build(RunConfig, {**top, **sections}, "the top level", "")


def shipped_configs() -> dict[str, Path]:
    """Configs that ship with the package, by name (``quickstart``, ``paper``, ...)."""
    folder = resources.files("entropi.host") / "configs"
    return {
        p.name.removesuffix(".toml"): Path(str(p))
        for p in folder.iterdir()
        if p.name.endswith(".toml")
    }


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"SECTION.KEY=VALUE"`` (or ``"KEY=VALUE"`` for a top-level key) -> (path, value).

    VALUE is read as a TOML value (``2``, ``0.5``, ``true``, ``["onnx"]``, ``"x"``); anything that
    is not valid TOML is taken as a plain string, so ``data.target=imagefolder:my/photos`` needs
    no quotes.
    """
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path) or len(path) > 2:
        raise ConfigError(
            f"--set expects SECTION.KEY=VALUE (or KEY=VALUE at the top level), got {text!r}"
        )
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except RecursionError as e:
        raise ConfigError(f"--set {key.strip()}: the value is nested too deeply") from e
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


_SPEC_CAPS = {
    "source": ("source_per_class", "source_test_per_class"),
    "target": ("target_train_per_class", "target_test_per_class"),
}
"""The per-class caps of each data spec: they were chosen for that spec."""


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the raw config dict with each ``SECTION.KEY=VALUE`` of ``overrides`` set.

    An override that changes ``data.source`` / ``data.target`` drops the raw config's per-class
    caps of it (:data:`_SPEC_CAPS`) unless it sets them too: caps chosen for the quickstart's
    CIFAR do not silently subsample ``--target imagefolder:MINE``. Relative data paths left in
    ``[data]`` (an override's) are made absolute against the working directory."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    before = dict(raw["data"]) if isinstance(raw.get("data"), dict) else {}
    changed: set[tuple[str, ...]] = set()
    for text in overrides:
        path, value = parse_override(text)
        changed.add(tuple(path))
        if len(path) == 1:
            if path[0] in _SECTIONS:
                raise ConfigError(f"--set {text!r}: [{path[0]}] is a section; set one of its keys")
            raw[path[0]] = value
            continue
        section, key = path
        if section not in _SECTIONS:
            raise ConfigError(
                f"--set {text!r}: unknown section [{section}]; sections: {sorted(_SECTIONS)}"
            )
        raw.setdefault(section, {})[key] = value
    for spec, caps in _SPEC_CAPS.items():
        if ("data", spec) in changed and raw["data"][spec] != before.get(spec):
            for cap in caps:
                if ("data", cap) not in changed:
                    raw["data"].pop(cap, None)
    if isinstance(raw.get("data"), dict):
        # lazy: keeps this module importable without torch
        from ..data import resolve_data_paths

        raw["data"] = resolve_data_paths(raw["data"], [Path.cwd()])
    return raw


MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MB) is refused unread."""


def load_config(path_or_name: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a TOML config file, or a shipped config by name (see :func:`shipped_configs`), with
    ``SECTION.KEY=VALUE`` overrides (:func:`apply_overrides`) validated like the file itself."""
    path = Path(path_or_name)
    if not path.is_file():
        shipped = shipped_configs()
        if str(path_or_name) in shipped:
            path = shipped[str(path_or_name)]
        else:
            raise ConfigError(
                f"config {str(path_or_name)!r} is neither a file nor a shipped config; shipped: "
                + ", ".join(sorted(shipped))
            )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES} bytes; is it a config file?")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except RecursionError as e:
        raise ConfigError(f"{path} is not a config: its values are nested too deeply") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    # lazy: keeps this module importable without torch
    from ..data import absolute_roots, config_file_bases, resolve_data_paths

    if isinstance(raw.get("data"), dict):  # the file's relative data paths: from its folder
        raw["data"] = resolve_data_paths(raw["data"], config_file_bases(path))
    cfg = config_from_dict(apply_overrides(raw, overrides))
    cfg.data.roots = absolute_roots(cfg.data.roots, [Path.cwd()])  # the default's
    return cfg


_TOML_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
"""TOML basic-string escapes with a short form; other control characters are ``\\uXXXX``."""


def _toml_string(s: str) -> str:
    """``s`` as a TOML basic string: backslash, quote and every control character (U+0000 to
    U+001F and U+007F, which TOML forbids raw) escaped, so that ``tomllib`` reads ``s`` back."""
    out = []
    for ch in s:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def config_to_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML (every key, defaults included); loads back to ``cfg``."""
    d = cfg.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if k not in _SECTIONS]
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in d[section].items()]
    return "\n".join(lines) + "\n"
