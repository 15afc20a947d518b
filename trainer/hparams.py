"""The model's hyperparameters: their names, defaults and rules, in one place.

:class:`trainer.wals.WALSModel` takes these as keyword arguments (``implicit``'s vocabulary:
``factors``, ``regularization``, ``alpha``, ``iterations``, ...) and checks them with
:func:`validate`; ``python -m trainer.task`` takes its defaults from :data:`DEFAULTS` and maps
its flags onto these names in :func:`trainer.flags.model_kwargs`, then calls the same
:func:`validate`, so a rule is written once. Standard library only: the command line imports
this module before NumPy or TensorFlow.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

from trainer.errors import TrainerInputError

Objective = Literal["implicit", "wals"]
Confidence = Literal["linear", "log"]
ColWeights = Literal["uniform", "inverse_linear", "inverse_power"]
Solver = Literal["cholesky", "cg"]
Backend = Literal["auto", "tensorflow", "numba"]
DType = Literal["float32", "float64"]


@dataclass(frozen=True)
class Defaults:
    """The defaults of the library and of the command line (chosen by benchmark: README
    "Defaults"). The meaning of each is in :mod:`trainer.weights` and :mod:`trainer.wals`."""

    factors: int = 16
    regularization: float = 10.0
    alpha: float = 10.0
    iterations: int = 10
    objective: Objective = "implicit"
    unobserved_weight: float = 0.01
    confidence: Confidence = "linear"
    epsilon: float = 1.0
    col_weights: ColWeights = "uniform"
    col_weight_factor: float = 130.0
    col_weight_exp: float = 0.08
    solver: Solver = "cg"
    cg_steps: int = 3
    backend: Backend = "auto"
    batch_size: int = 4096
    dtype: DType = "float32"
    random_state: int = 0
    calculate_training_loss: bool = False


DEFAULTS = Defaults()

# integer hyperparameters: the smallest allowed value
_INT_MIN = {
    "factors": 1, "iterations": 1, "cg_steps": 1, "batch_size": 1, "random_state": 0,
    "max_batch_floats": 1,
}
# float hyperparameters: (lowest value, whether the lowest itself is allowed, why); all finite
_FLOAT_RANGE = {
    "regularization": (0.0, False, " (with λ = 0 the normal equations can be singular)"),
    "unobserved_weight": (0.0, True, ""),
    "alpha": (0.0, True, ""),
    "epsilon": (0.0, False, ""),
    "col_weight_factor": (0.0, True, ""),
    "col_weight_exp": (-math.inf, True, ""),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "objective": ("implicit", "wals"),
    "confidence": ("linear", "log"),
    "col_weights": ("uniform", "inverse_linear", "inverse_power"),
    "solver": ("cholesky", "cg"),
    "backend": ("auto", "tensorflow", "numba"),
    "dtype": ("float32", "float64"),
}
# may be None: the default is decided later (by the device, trainer.device)
_OPTIONAL = {"max_batch_floats", "device"}


class HyperparameterError(TrainerInputError):
    """A hyperparameter outside its rule; ``name``, ``rule`` and ``value`` let the command line
    say the same with its own flag name (:func:`trainer.flags.parse_args`)."""

    def __init__(self, name: str, rule: str, value: Any) -> None:
        self.name, self.rule, self.value = name, rule, value
        super().__init__(self.message(name))

    def message(self, name: str) -> str:
        """The error, naming the hyperparameter ``name`` (e.g. a command-line flag)."""
        shown = f"{self.value:g}" if isinstance(self.value, float) else repr(self.value)
        return f"{name} {self.rule}, got {shown}"


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise HyperparameterError(name, "must be an integer", value)
    if value < _INT_MIN[name]:
        raise HyperparameterError(name, f"must be >= {_INT_MIN[name]}", value)


def _check_float(name: str, value: Any) -> None:
    low, inclusive, why = _FLOAT_RANGE[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise HyperparameterError(name, "must be a number", value)
    if not math.isfinite(value):
        raise HyperparameterError(name, "must be a finite number", value)
    if value < low or (value == low and not inclusive):
        raise HyperparameterError(name, f"must be {'>=' if inclusive else '>'} {low:g}{why}", value)


def _check_one(name: str, value: Any) -> None:
    if value is None and name in _OPTIONAL:
        return
    if name in _INT_MIN:
        _check_int(name, value)
    elif name in _FLOAT_RANGE:
        _check_float(name, value)
    elif name in CHOICES:
        if value not in CHOICES[name]:
            raise HyperparameterError(name, f"must be one of {', '.join(map(repr, CHOICES[name]))}", value)
    elif name == "calculate_training_loss":
        if not isinstance(value, bool):
            raise HyperparameterError(name, "must be True or False", value)
    elif name == "device":
        several = isinstance(value, (list, tuple)) and len(value) > 0
        if not (isinstance(value, str) or several and all(isinstance(d, str) for d in value)):
            raise HyperparameterError(
                name, "must be a TensorFlow device name such as '/GPU:0', or a list of them", value)
    else:
        raise TypeError(f"unknown hyperparameter {name!r}")


def validate(**values: Any) -> None:
    """Checks the given hyperparameters (any subset of :class:`Defaults`' fields plus
    ``max_batch_floats`` and ``device``) against their rules.

    Raises
    ------
    HyperparameterError
        The first one outside its rule: integers (``factors``, ``iterations``, ``cg_steps``,
        ``batch_size``, ``max_batch_floats`` ≥ 1; ``random_state`` ≥ 0), finite numbers
        (``regularization``, ``epsilon`` > 0; ``unobserved_weight``, ``alpha``,
        ``col_weight_factor`` ≥ 0; any ``col_weight_exp``), one of the choices
        (``objective``, ``confidence``, ``col_weights``, ``solver``, ``backend``, ``dtype``), and
        ``col_weights`` other than ``"uniform"`` only with ``objective="wals"``.
    TypeError
        An unknown name.
    """
    for name, value in values.items():
        _check_one(name, value)
    if values.get("objective") == "implicit" and values.get("col_weights", "uniform") != "uniform":
        raise HyperparameterError(
            "col_weights", "must be 'uniform' with objective='implicit' (the per-item weights "
            "belong to objective='wals')", values["col_weights"],
        )
