"""entropi.host: pre-training, the pruning ladder, entropy selection and the `entropi` CLI.

Public API (imported on first use, so that `entropi --help` does not pay for torch):

- :func:`run_all`: the whole pipeline over a run folder (resumable); the stages are in
  :mod:`entropi.host.run.stages`, the folder is a :class:`RunDir`.
- :func:`load_config`, :class:`RunConfig`: validated TOML configs; :func:`shipped_configs`.
- :func:`load_dataset`, :func:`stratified_subset`: data readers and low-data subsets.
- :func:`build_model`, :data:`ARCHITECTURES`: CIFAR-sized encoders with a linear head.
- :func:`global_magnitude_masks`, :func:`geometric_alphas`: iterative magnitude pruning.
- :func:`state_entropy`: quantized-state entropy and the per-unit bound (numpy only).
- :data:`CRITERIA`, :func:`select_rung`: the registry of selection criteria and the rule.
- :func:`linear_probe`, :func:`load_rung`, :func:`export_rung`, :func:`bundle_rung`.
"""

from importlib import import_module

_EXPORTS = {
    "run_all": "run.pipeline",
    "RunDir": "run.rundir",
    "CRITERIA": "selection.rules",
    "select_rung": "selection.rules",
    "export_rung": "deployment.rung_export",
    "RunConfig": "run.config",
    "load_config": "run.config",
    "shipped_configs": "run.config",
    "load_dataset": "data",
    "stratified_subset": "data",
    "build_model": "ladder.models",
    "ARCHITECTURES": "ladder.models",
    "global_magnitude_masks": "ladder.prune",
    "geometric_alphas": "ladder.prune",
    "state_entropy": "selection.entropy",
    "linear_probe": "selection.probe",
    "load_rung": "ladder.rungs",
    "bundle_rung": "deployment.rung_export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
