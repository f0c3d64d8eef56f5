"""Fine-tuning a rung on a target: ``head``, ``layer:BLOCK``, ``scl:BLOCK`` and ``full``.

What head-only training (the device's probe) gives up, measured on the same encoder and target
(paper 001, Sec. 4 and Fig. 8; REFERENCE.md sec. 3):

- ``head``: a new linear head on the frozen encoder (the encoder in eval mode, so its features
  are fixed: what the device trains).
- ``layer:BLOCK`` (paper 001 "Layer FT"): one intermediate block of the encoder plus the head.
- ``scl:BLOCK`` ("SCL FT"): as Layer FT, plus a skip connection from the block's output to the
  penultimate features: ``f(x) = phi(x) + pad(pool(b(x)))`` where ``b(x)`` is the block's output
  (``N x C x H x W``), ``pool`` the adaptive average pooling to 1x1 and ``pad`` zero-pads the
  ``C`` channels to the ``D`` features (``C <= D``); the head sees ``f(x)``.
- ``full``: every encoder parameter and the head.

Blocks are named as the encoder (an ``nn.Sequential``) names its children: a compound child
(a ResNet ``BasicBlock``, a MobileNet ``InvertedResidual``) is the block ``"i"``; a run of plain
layers (conv, its batch norm, activation, pooling) is the block ``"i-j"`` (children i..j), which
starts at each conv / linear. :func:`list_blocks` lists them; e.g. the CIFAR ResNet18's eight
basic blocks are ``"3"`` .. ``"10"`` (paper 001's "Block 5" is ``"7"``), smallnet's four stages
are ``"0-3"``, ``"4-7"``, ``"8-11"``, ``"12-16"``.

Training: SGD with Nesterov momentum, a per-step cosine schedule to 0 (as :mod:`.train`), the
head at ``lr`` and fine-tuned encoder parameters at ``encoder_lr``; weight decay on weights
(ndim > 1) only; the last partial batch dropped. Frozen modules stay in eval mode (their batch
norm statistics do not move; paper 001 App. B instead lets every BN update its statistics on
the target in every mode), trained ones are in train mode. Pruned weights stay exactly zero:
the rung's masks are applied after every optimizer step (:func:`~.prune.apply_masks`). Without
augmentation the frozen prefix (everything before the first trained module) is run once and
its output cached, which gives the same result as running it every step (a test checks it).

NC1 (paper 001 eq. 4, :func:`~.criteria.nc1`) of the target training features the head sees
is measured before and after each mode: paper 001 claims more collapse on the target goes with
better test accuracy.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from entropi.common.files import atomic_write_bytes
from entropi.export.rung import load_rung_file

from ..data import iterate_batches, normalize
from ..ladder.models import ARCHITECTURES, build_encoder, prunable_parameters
from ..ladder.prune import Masks, apply_masks, dense_masks
from ..ladder.rungs import classifier_from_rung, resolve_rung
from ..ladder.train import TrainingDivergedError
from ..run.config import load_config
from ..run.rundata import load_target
from ..run.rundir import NotARunError, RunDir
from ..selection.criteria import CriterionError, nc1
from .finetune_config import FinetuneConfig, FinetuneError

__all__ = [
    "FINETUNED_FORMAT",
    "MODE_FORMS",
    "MODE_KINDS",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneModel",
    "FinetuneRun",
    "LoadedModel",
    "Mode",
    "block_outputs",
    "check_masks",
    "finetune",
    "finetune_rung",
    "layer_representations",
    "list_blocks",
    "load_finetuned",
    "load_model_spec",
    "load_run_target",
    "load_rung_model",
    "parse_mode",
    "save_finetuned",
    "skip_connection",
    "summarize_runs",
]

MODE_KINDS = ("head", "layer", "scl", "full")
MODE_FORMS = ("head", "layer:BLOCK", "scl:BLOCK", "full")
FINETUNED_FORMAT = 1
"""Version of the fine-tuned model file written by :func:`save_finetuned`."""

_LEAF_TYPES = (nn.Conv2d, nn.Linear)


# --- blocks and modes ---------------------------------------------------------------------------


def _sequential(encoder: nn.Module) -> nn.Sequential:
    if not isinstance(encoder, nn.Sequential):
        raise FinetuneError(
            f"fine-tuning modes need an nn.Sequential encoder (every entry of ARCHITECTURES is "
            f"one: {', '.join(sorted(ARCHITECTURES))}), got {type(encoder).__name__}"
        )
    return encoder


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def list_blocks(encoder: nn.Module) -> dict[str, tuple[int, int]]:
    """The encoder's blocks: name -> (first, last) child index, inclusive, in forward order.

    A child with parameters of its own sub-modules (not a single conv / linear / batch norm) is
    a block by itself; otherwise a block starts at each conv / linear child and takes the
    parameter-free and batch-norm children after it. Children before the first block or holding
    no parameters after a compound block (global pooling, flatten) belong to no block.
    """
    children = list(_sequential(encoder).children())
    blocks: list[list[int]] = []
    open_run = False  # a plain-layer block that following BN / parameter-free children join
    for i, m in enumerate(children):
        compound = _has_params(m) and any(_has_params(c) for c in m.children())
        if compound:
            blocks.append([i, i])
            open_run = False
        elif isinstance(m, _LEAF_TYPES):
            blocks.append([i, i])
            open_run = True
        elif open_run:
            blocks[-1][1] = i
    return {(f"{a}" if a == b else f"{a}-{b}"): (a, b) for a, b in blocks}


@dataclass(frozen=True)
class Mode:
    """One fine-tuning mode: ``kind`` in :data:`MODE_KINDS`, ``block`` for layer / scl."""

    kind: str
    block: str | None = None
    span: tuple[int, int] | None = None
    """(first, last) encoder child of the block"""

    @property
    def name(self) -> str:
        return self.kind if self.block is None else f"{self.kind}:{self.block}"

    @property
    def slug(self) -> str:
        """The name as a folder name (``layer-8-11``)."""
        return self.name.replace(":", "-")


def parse_mode(text: str, encoder: nn.Module) -> Mode:
    """``head``, ``full``, ``layer:BLOCK`` or ``scl:BLOCK`` for ``encoder`` (blocks checked)."""
    if not isinstance(text, str):
        raise FinetuneError(f"mode must be a string, one of {', '.join(MODE_FORMS)}")
    kind, sep, block = text.partition(":")
    if kind not in MODE_KINDS:
        raise FinetuneError(f"unknown fine-tuning mode {text!r}; modes: {', '.join(MODE_FORMS)}")
    blocks = list_blocks(encoder)
    if kind in ("head", "full"):
        if sep:
            raise FinetuneError(f"mode {kind!r} takes no block, got {text!r}")
        return Mode(kind)
    if not block:
        raise FinetuneError(
            f"mode {kind!r} needs a block ({kind}:BLOCK); blocks of this encoder: "
            + ", ".join(blocks)
        )
    if block not in blocks:
        raise FinetuneError(
            f"unknown block {block!r} in mode {text!r}; blocks of this encoder: "
            + ", ".join(blocks)
        )
    return Mode(kind, block, blocks[block])


# --- the model ----------------------------------------------------------------------------------


def skip_connection(out: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """Paper 001's SCL skip: adaptive average pooling to 1x1, channels zero-padded to
    ``feature_dim``. ``out`` is ``N x C x H x W`` (or ``N x C``, already pooled)."""
    if out.ndim == 4:
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    elif out.ndim != 2:
        raise FinetuneError(f"a skip connection needs an N x C (x H x W) output, got {out.shape}")
    c = out.shape[1]
    if c > feature_dim:
        raise FinetuneError(
            f"the block outputs {c} channels, more than the {feature_dim} features it would be "
            "added to (zero-padding cannot shrink it); pick a block with fewer channels"
        )
    return F.pad(out, (0, feature_dim - c)) if c < feature_dim else out


def block_outputs(
    encoder: nn.Module,
    x: torch.Tensor,
    *,
    skip_from: int | None = None,
    feature_dim: int | None = None,
    start: int = 0,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run the encoder's children ``start..`` on ``x``; return (features, {child: output}).

    With ``skip_from``, the output of child ``skip_from`` goes through :func:`skip_connection`
    and is added to the features (SCL FT).
    """
    children = list(_sequential(encoder).children())
    outs: dict[int, torch.Tensor] = {}
    skip = None
    for i in range(start, len(children)):
        x = children[i](x)
        outs[i] = x
        if i == skip_from:
            skip = skip_connection(x, feature_dim or encoder.feature_dim)
    if skip is not None:
        x = x + skip
    return x, outs


class FinetuneModel(nn.Module):
    """A rung's encoder, a new head, and (``scl``) the skip connection, set up for ``mode``."""

    def __init__(self, encoder: nn.Module, num_classes: int, mode: Mode) -> None:
        super().__init__()
        self.encoder = _sequential(encoder)
        self.feature_dim = int(encoder.feature_dim)
        self.mode = mode
        self.head = nn.Linear(self.feature_dim, num_classes)
        n = len(self.encoder)
        if mode.kind == "head":
            self.trained_span: tuple[int, int] | None = None
            self.first_trained = n
        elif mode.kind == "full":
            self.trained_span = (0, n - 1)
            self.first_trained = 0
        else:
            assert mode.span is not None
            self.trained_span = mode.span
            self.first_trained = mode.span[0]
        self.skip_from = mode.span[1] if mode.kind == "scl" else None
        self.set_trainable()

    def trained_modules(self) -> list[nn.Module]:
        """The encoder children the mode trains (the head is always trained)."""
        if self.trained_span is None:
            return []
        a, b = self.trained_span
        return list(self.encoder.children())[a : b + 1]

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def set_trainable(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        for m in [*self.trained_modules(), self.head]:
            for p in m.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True) -> FinetuneModel:
        """Train mode for the trained modules and the head only; frozen modules stay in eval."""
        super().train(False)
        if mode:
            for m in [*self.trained_modules(), self.head]:
                m.train(True)
        self.training = mode
        return self

    def features(self, x: torch.Tensor, *, start: int = 0) -> torch.Tensor:
        """The head's input for images ``x`` (or, with ``start``, for the output of child
        ``start - 1``)."""
        return block_outputs(
            self.encoder, x, skip_from=self.skip_from, feature_dim=self.feature_dim, start=start
        )[0]

    def forward(self, x: torch.Tensor, *, start: int = 0) -> torch.Tensor:
        return self.head(self.features(x, start=start))

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen children before the first trained one (identity for ``full``)."""
        for m in list(self.encoder.children())[: self.first_trained]:
            x = m(x)
        return x


# --- training -----------------------------------------------------------------------------------


@dataclass
class FinetuneRun:
    """One trained mode x seed."""

    mode: str
    seed: int
    test_accuracy: float
    train_accuracy: float
    final_loss: float
    trainable_params: int
    trainable_nonzero: int
    nc1_before: float | None
    nc1_after: float | None
    steps: int
    seconds: float
    model: FinetuneModel | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model")
        return d


def check_masks(encoder: nn.Module, masks: Masks | None) -> Masks:
    """The rung's masks, checked against the encoder's prunable weights (``None`` / empty:
    dense masks)."""
    if not masks:
        return dense_masks(encoder)
    names = [n for n, _ in prunable_parameters(encoder)]
    if set(masks) != set(names):
        missing, extra = sorted(set(names) - set(masks)), sorted(set(masks) - set(names))
        raise FinetuneError(
            f"the masks do not match the encoder's prunable weights (missing {missing}, "
            f"unexpected {extra})"
        )
    params = dict(prunable_parameters(encoder))
    out: Masks = {}
    for n in names:
        m = torch.as_tensor(masks[n])
        if m.shape != params[n].shape:
            raise FinetuneError(
                f"mask {n} has shape {tuple(m.shape)}, weight {tuple(params[n].shape)}"
            )
        out[n] = m.to(torch.bool)
    return out


def _to_tensor(a, dtype, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype).to(device)


@torch.no_grad()
def _apply(fn, x: torch.Tensor, batch: int, mean, std) -> torch.Tensor:
    """``fn`` on normalized batches of uint8 NHWC ``x`` (eval, no grad), concatenated."""
    out = []
    for start in range(0, len(x), batch):
        out.append(fn(normalize(x[start : start + batch], mean, std)).float())
    return torch.cat(out)


def _nc1(features: torch.Tensor, labels: torch.Tensor) -> float | None:
    try:
        return nc1(features.double().cpu().numpy(), labels.cpu().numpy())
    except CriterionError:
        return None  # too few samples per class, or collapsed to a constant


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def _target_tensors(data, device: torch.device, num_classes: int | None):
    """The target's train / test images and labels on ``device``, and its class count (>= 2)."""
    xtr = _to_tensor(data.x_train, torch.uint8, device)
    ytr = _to_tensor(data.y_train, torch.int64, device)
    xte = _to_tensor(data.x_test, torch.uint8, device)
    yte = _to_tensor(data.y_test, torch.int64, device)
    if num_classes is None:
        num_classes = int(max(int(ytr.max()), int(yte.max()) if len(yte) else 0)) + 1
    if num_classes < 2:
        raise FinetuneError(f"a target needs at least 2 classes, got {num_classes}")
    return xtr, ytr, xte, yte, num_classes


def _use_prefix_cache(
    model: FinetuneModel, xtr: torch.Tensor, cfg: FinetuneConfig, mean, std, cache_prefix
) -> bool:
    """Whether the frozen prefix runs once: as asked, else when not augmenting and it fits."""
    if cache_prefix is None:
        probe = model.prefix(normalize(xtr[:1], mean, std))
        cache_prefix = not cfg.augment and probe.numel() * 4 * len(xtr) <= cfg.cache_bytes
    if cfg.augment and cache_prefix:
        raise FinetuneError("the frozen prefix cannot be cached with augmentation on")
    return cache_prefix


def _optimizer(model: FinetuneModel, cfg: FinetuneConfig) -> torch.optim.SGD:
    """SGD over the head (``cfg.lr``) and the trained blocks (``cfg.encoder_lr``), weight decay
    on matrices only; each group keeps its base rate as ``lr0`` for the cosine schedule."""
    decay = [p for _, p in model.trainable_parameters() if p.ndim > 1]
    groups = []
    for params, lr in (
        ([p for p in model.head.parameters()], cfg.lr),
        ([p for m in model.trained_modules() for p in m.parameters()], cfg.encoder_lr),
    ):
        ids = {id(p) for p in decay}
        groups += [
            {
                "params": [p for p in params if id(p) in ids],
                "weight_decay": cfg.weight_decay,
                "lr0": lr,
            },
            {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0, "lr0": lr},
        ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def _epoch_batches(xtr, ytr, cached, cfg: FinetuneConfig, gen, device, mean, std, drop_last: bool):
    """One epoch's shuffled (input, label) batches: rows of the cached prefix output when there
    is one, else normalized (and, with ``cfg.augment``, augmented) images."""
    n = len(xtr)
    if cached is not None:
        order = torch.randperm(n, generator=gen, device=device)
        stop = n - n % cfg.batch_size if drop_last else n
        return (
            (cached[order[i : i + cfg.batch_size]], ytr[order[i : i + cfg.batch_size]])
            for i in range(0, stop, cfg.batch_size)
        )
    return iterate_batches(
        xtr,
        ytr,
        cfg.batch_size,
        shuffle=True,
        augment=cfg.augment,
        generator=gen,
        mean=mean,
        std=std,
        drop_last=drop_last,
    )


def _train_epochs(
    model: FinetuneModel,
    masks: Masks,
    mode: Mode,
    xtr,
    ytr,
    cached,
    cfg: FinetuneConfig,
    *,
    seed: int,
    device: torch.device,
    mean,
    std,
) -> tuple[int, float, float]:
    """``cfg.epochs`` of cosine-scheduled SGD, masks re-applied after every step (from the
    cached prefix output when ``cached``); returns (steps, last loss, seconds)."""
    start = model.first_trained if cached is not None else 0
    opt = _optimizer(model, cfg)
    n = len(xtr)
    drop_last = n > cfg.batch_size
    steps_per_epoch = n // cfg.batch_size if drop_last else 1
    total = max(1, cfg.epochs * steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(seed)
    step, loss_val, t0 = 0, float("nan"), time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        for xb, yb in _epoch_batches(xtr, ytr, cached, cfg, gen, device, mean, std, drop_last):
            for g in opt.param_groups:
                g["lr"] = g["lr0"] * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(xb, start=start), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            apply_masks(model.encoder, masks)
            step += 1
        loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise TrainingDivergedError(
                f"finetune {mode.name}: loss became {loss_val}; lower the learning rate"
            )
    return step, loss_val, time.perf_counter() - t0


def finetune(
    encoder: nn.Module,
    masks: Masks | None,
    mode: str | Mode,
    data,
    cfg: FinetuneConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    cache_prefix: bool | None = None,
    measure_nc1: bool = True,
) -> FinetuneRun:
    """Fine-tune a copy of ``encoder`` (a rung's; it is not changed) in ``mode`` on ``data``.

    ``data`` has ``x_train``/``y_train``/``x_test``/``y_test`` (uint8 NHWC images, integer
    labels, numpy or torch; :class:`~.rundata.TargetData`). ``mean``/``std`` are the rung's
    input normalization. ``masks`` (prunable name -> bool) keep pruned weights at exactly zero.
    ``cache_prefix`` (default: when not augmenting and the cache fits ``cfg.cache_bytes``) runs
    the frozen prefix once. Returns the accuracies, NC1 before / after and the trained model.
    """

    device = torch.device(device)
    enc = copy.deepcopy(encoder).to(device)
    mode = mode if isinstance(mode, Mode) else parse_mode(mode, enc)
    masks = {k: v.to(device) for k, v in check_masks(enc, masks).items()}
    xtr, ytr, xte, yte, num_classes = _target_tensors(data, device, num_classes)
    torch.manual_seed(seed)  # the new head's initialisation
    model = FinetuneModel(enc, num_classes, mode).to(device)
    apply_masks(model.encoder, masks)
    mean, std = tuple(mean), tuple(std)

    model.eval()
    nc1_before = (
        _nc1(_apply(model.features, xtr, cfg.eval_batch, mean, std), ytr) if measure_nc1 else None
    )

    # the frozen prefix, once (no augmentation: it is a fixed function of the image)
    cache_prefix = _use_prefix_cache(model, xtr, cfg, mean, std, cache_prefix)
    cached = _apply(model.prefix, xtr, cfg.eval_batch, mean, std) if cache_prefix else None
    step, loss_val, seconds = _train_epochs(
        model, masks, mode, xtr, ytr, cached, cfg, seed=seed, device=device, mean=mean, std=std
    )

    model.eval()
    feats = _apply(model.features, xtr, cfg.eval_batch, mean, std)
    train_acc = _accuracy(model.head(feats), ytr)
    test_acc = (
        _accuracy(_apply(model, xte, cfg.eval_batch, mean, std), yte) if len(xte) else float("nan")
    )
    params = [p for _, p in model.trainable_parameters()]
    return FinetuneRun(
        mode=mode.name,
        seed=seed,
        test_accuracy=test_acc,
        train_accuracy=train_acc,
        final_loss=loss_val,
        trainable_params=sum(p.numel() for p in params),
        trainable_nonzero=sum(int(torch.count_nonzero(p.detach())) for p in params),
        nc1_before=nc1_before,
        nc1_after=_nc1(feats, ytr) if measure_nc1 else None,
        steps=step,
        seconds=round(seconds, 3),
        model=model,
    )


def summarize_runs(runs: Sequence[FinetuneRun]) -> dict[str, dict[str, Any]]:
    """Per mode: mean and sample std (ddof 1; 0 for one seed) of the accuracies and NC1 over
    seeds, the trainable parameter counts, and the per-seed rows."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r.mode for r in runs):
        rows = [r for r in runs if r.mode == name]

        def stats(key: str, rows=rows) -> tuple[float | None, float | None]:
            vals = [getattr(r, key) for r in rows if getattr(r, key) is not None]
            if not vals:
                return None, None
            a = np.asarray(vals, dtype=float)
            return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0

        entry: dict[str, Any] = {"seeds": [r.seed for r in rows]}
        for key in ("test_accuracy", "train_accuracy", "nc1_before", "nc1_after"):
            entry[key], entry[f"{key}_std"] = stats(key)
        entry["trainable_params"] = rows[0].trainable_params
        entry["trainable_nonzero"] = rows[0].trainable_nonzero
        entry["runs"] = [r.as_dict() for r in rows]
        out[name] = entry
    return out


# --- saved fine-tuned models --------------------------------------------------------------------


def save_finetuned(path: str | Path, model: FinetuneModel, meta: dict[str, Any]) -> Path:
    """Write a fine-tuned model (``torch.save`` of state dicts and plain metadata) atomically.

    ``meta`` must hold ``arch`` and the input ``normalization``; ``source`` (run, rung) and
    ``target`` are recorded for :func:`load_finetuned`'s callers."""

    payload = {
        "format": FINETUNED_FORMAT,
        "mode": model.mode.name,
        "num_classes": model.head.out_features,
        "encoder": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "meta": meta,
    }
    if "arch" not in meta or "normalization" not in meta:
        raise FinetuneError("save_finetuned: meta needs 'arch' and 'normalization'")
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(Path(path), buf.getvalue())


def load_finetuned(path: str | Path) -> tuple[FinetuneModel, dict[str, Any]]:
    """Read a fine-tuned model (a ``model.pt`` or the folder holding one); eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FinetuneError(f"{path} does not exist: not a fine-tuned model (model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise FinetuneError(
            f"{path} is not a fine-tuned model file ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FINETUNED_FORMAT:
        raise FinetuneError(f"{path} is not a fine-tuned model file (format {FINETUNED_FORMAT})")
    meta = payload["meta"]
    arch = meta.get("arch")
    if arch not in ARCHITECTURES:
        raise FinetuneError(
            f"{path}: architecture {arch!r} unknown; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    encoder = build_encoder(arch)
    model = FinetuneModel(
        encoder, int(payload["num_classes"]), parse_mode(payload["mode"], encoder)
    )
    try:
        model.encoder.load_state_dict(payload["encoder"])
        model.head.load_state_dict(payload["head"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise FinetuneError(f"{path}: weights do not match {arch!r}: {e}") from e
    return model.eval(), meta


# --- a run's rungs and targets ------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model named on the command line: a rung of a run, or a fine-tuned model's folder."""

    model: FinetuneModel
    label: str
    normalization: dict[str, list[float]]
    run: Path | None
    """the run folder whose config gives the target (a rung's run, or the one fine-tuned from)"""
    rung: int | None
    masks: Masks | None = None
    info: Any = None


def _run_and_rung(spec: str) -> tuple[str, str | int]:
    head, sep, tail = spec.rpartition(":")
    if sep and (tail == "selected" or tail.isdigit()):
        return head, tail if tail == "selected" else int(tail)
    return spec, "selected"


def load_rung_model(run: str | Path, rung: str | int = "selected") -> LoadedModel:
    """Rung ``rung`` (an index or ``selected``) of ``run`` as a head-mode :class:`FinetuneModel`
    (its head is the source head), with the rung's masks and normalization."""

    rd = RunDir(run)
    index = resolve_rung(rd, rung)
    record = load_rung_file(rd.rung(index), index)
    clf = classifier_from_rung(record)
    model = FinetuneModel(clf.encoder, record.info.num_source_classes, Mode("head"))
    model.head.load_state_dict(clf.head.state_dict())
    masks = check_masks(model.encoder, record.masks)
    return LoadedModel(
        model.eval(),
        f"{Path(run).name}:{index}",
        dict(record.info.normalization),
        Path(run),
        index,
        masks,
        record.info,
    )


def load_model_spec(spec: str) -> LoadedModel:
    """``RUNDIR[:RUNG]`` (RUNG an index or ``selected``, the default) or a fine-tuned model
    (a ``model.pt`` written by ``entropi finetune``, or its folder)."""
    path = Path(spec)
    if (path.is_dir() and (path / "model.pt").is_file()) or (
        path.is_file() and path.suffix == ".pt"
    ):
        model, meta = load_finetuned(path)
        src = meta.get("source") or {}
        return LoadedModel(
            model,
            f"{path.parent.name if path.is_file() else path.name}",
            dict(meta["normalization"]),
            Path(src["run"]) if src.get("run") else None,
            src.get("rung"),
        )
    run, rung = _run_and_rung(spec)
    if not (Path(run) / "config.toml").is_file():
        raise FinetuneError(
            f"{spec!r} is neither a run folder (RUNDIR or RUNDIR:RUNG with a config.toml) nor a "
            "fine-tuned model folder (with model.pt)"
        )
    return load_rung_model(run, rung)


def load_run_target(run: str | Path, target: str | None = None, overrides: Sequence[str] = ()):
    """The run's config with ``data.target`` (and ``overrides``) replaced, and its target data
    as the run loads it (the same per-class subsets and seed): ``(cfg, TargetData)``."""

    rd = RunDir(run)
    if not rd.config.is_file():
        raise NotARunError(f"{rd.root} is not a run directory (no config.toml)")
    sets = list(overrides) + ([f"data.target={target}"] if target else [])
    cfg = load_config(rd.config, sets)
    return cfg, load_target(cfg)


def _g(v: float | None) -> str:
    """NC1 for a person: 3 significant digits (None: undefined)."""
    return "n/a" if v is None else f"{v:.3g}"


def finetune_rung(
    loaded: LoadedModel,
    modes: Sequence[str],
    data,
    cfg: FinetuneConfig,
    *,
    seeds: Sequence[int] = (0, 1),
    device: str | torch.device = "cpu",
    log=None,
) -> tuple[dict[str, Any], list[FinetuneRun]]:
    """Every mode x seed on one rung; returns (``finetune.json``'s host part, the runs).

    Unknown modes or blocks are refused before anything trains."""
    enc = loaded.model.encoder
    parsed = [parse_mode(m, enc) for m in modes]
    if not parsed:
        raise FinetuneError(f"no mode given; modes: {', '.join(MODE_FORMS)}")
    if len({m.name for m in parsed}) != len(parsed):
        raise FinetuneError(f"a mode is given twice: {[m.name for m in parsed]}")
    norm = loaded.normalization
    num_classes = len(data.classes)
    runs = []
    for mode in parsed:
        for seed in seeds:
            r = finetune(
                enc,
                loaded.masks,
                mode,
                data,
                cfg,
                mean=norm["mean"],
                std=norm["std"],
                seed=seed,
                device=device,
                num_classes=num_classes,
            )
            runs.append(r)
            if log:
                log(
                    f"finetune {loaded.label} {mode.name} seed {seed}: test "
                    f"{r.test_accuracy:.4f}, NC1 {_g(r.nc1_before)} -> {_g(r.nc1_after)}, "
                    f"{r.seconds:.1f}s"
                )
    info = loaded.info
    result = {
        "source": {
            "run": str(loaded.run) if loaded.run else None,
            "rung": loaded.rung,
            "arch": info.arch if info else None,
            "alpha": info.alpha if info else None,
            "nnz": info.nnz if info else None,
        },
        "blocks": list(list_blocks(enc)),
        "n_train": int(len(data.y_train)),
        "n_test": int(len(data.y_test)),
        "num_classes": num_classes,
        "seeds": list(seeds),
        "config": asdict(cfg),
        "modes": summarize_runs(runs),
    }
    return result, runs


def layer_representations(model: FinetuneModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every block (:func:`list_blocks`, named ``block BLOCK``) and the head's
    input (``features``, with the skip for SCL) for normalized images ``x``."""
    blocks = list_blocks(model.encoder)
    feats, outs = block_outputs(
        model.encoder, x, skip_from=model.skip_from, feature_dim=model.feature_dim
    )
    reps = {name: outs[b] for name, (_, b) in blocks.items()}
    reps["features"] = feats
    return reps
