"""The trainer package's structure: no import cycles, light modules stay light, one
hyperparameter vocabulary (the command line's defaults and rules are the library's), and the
device policy (trainer/device.py) on every device TensorFlow sees."""
from __future__ import annotations

import argparse
import ast
import inspect
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest


from tests.trainer_fixtures import REPO, device  # noqa: E402,F401 - device: the per-device fixture

from trainer import device as device_policy  # noqa: E402
from trainer import flags, hparams  # noqa: E402
from trainer.errors import TrainerInputError  # noqa: E402

TRAINER = REPO / "trainer"
MODULES = sorted(p.stem for p in TRAINER.glob("*.py") if p.stem != "__init__")


# --------------------------------------------------------------------------- imports
def _imported_trainer_modules(path: pathlib.Path) -> set[str]:
    """Every ``trainer.X`` a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("trainer.") and n.split(".")[1] in MODULES}
    return found


def test_no_import_cycles_among_the_trainer_modules():
    """Function-level imports count too (a lazy import cycle is still a cycle)."""
    graph = {m: _imported_trainer_modules(TRAINER / f"{m}.py") - {m} for m in MODULES}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join([*path, m, dep])
            if dep not in state:
                visit(dep, [*path, m])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [])
    # nothing depends on the command line, except trainer.tune: a command line built on it
    assert "task" not in set().union(*(deps for m, deps in graph.items() if m != "tune"))
    assert graph["device"] == set() and graph["hparams"] == {"errors"}


_PROBE = r"""
import importlib, sys
importlib.import_module(sys.argv[1])
heavy = sorted(m for m in ("numpy", "tensorflow", "apache_beam", "tensorflow_transform") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


@pytest.mark.parametrize("module", ["trainer", *(f"trainer.{m}" for m in MODULES)])
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    """Every module imports on its own (no order dependence), none imports TensorFlow at the
    top, and the flag parser and the package itself need neither NumPy nor TensorFlow
    (run_training.sh checks flags with any Python)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", _PROBE, module], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    heavy = p.stdout.split("HEAVY", 1)[1].strip().split(",")
    assert "tensorflow" not in heavy and "apache_beam" not in heavy
    if module in ("trainer", "trainer.flags", "trainer.hparams", "trainer.errors", "trainer.device"):
        assert heavy == [""], heavy


def test_trainer_exports_walsmodel_lazily():
    code = ("import sys, trainer\nassert 'trainer.wals' not in sys.modules\n"
            "from trainer import WALSModel\nfrom trainer.wals import WALSModel as W\nassert WALSModel is W\n"
            "from trainer.task import parse_args\nassert parse_args is __import__('trainer.flags').flags.parse_args\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]


# --------------------------------------------------------------------------- one vocabulary
def _minimal_args(*extra: str) -> argparse.Namespace:
    return flags.parse_args(["--input_path", "i", "--output_dir", "o", *extra])


def test_cli_defaults_are_the_library_defaults():
    """The flags' defaults, mapped by model_kwargs, are WALSModel's own defaults, except the
    per-sweep loss, which the command line computes unless --no_training_loss."""
    from trainer.wals import WALSModel

    sig = inspect.signature(WALSModel)
    kwargs = flags.model_kwargs(_minimal_args())
    assert set(kwargs) <= set(sig.parameters)
    for name, value in kwargs.items():
        want = True if name == "calculate_training_loss" else sig.parameters[name].default
        assert value == want, name
    # and the library's defaults are hparams.DEFAULTS (the one table)
    for name, param in sig.parameters.items():
        if name not in ("device", "max_batch_floats"):
            assert param.default == getattr(hparams.DEFAULTS, name), name


def test_model_kwargs_maps_the_seed_flag_names():
    args = _minimal_args("--n_embeds", "7", "--num_epochs", "3", "--seed", "5", "--no_training_loss",
                         "--objective", "wals", "--unobserved_weight", "0.2")
    kw = flags.model_kwargs(args)
    assert (kw["factors"], kw["iterations"], kw["random_state"]) == (7, 3, 5)
    assert kw["calculate_training_loss"] is False
    assert (kw["objective"], kw["unobserved_weight"]) == ("wals", 0.2)
    from trainer.wals import WALSModel

    m = WALSModel(**kw)
    assert (m.factors, m.iterations, m.random_state, m.weighting.w0) == (7, 3, 5, 0.2)


@pytest.mark.parametrize("flag,value,keyword", [
    ("--n_embeds", "0", "factors"), ("--num_epochs", "0", "iterations"), ("--seed", "-1", "random_state"),
    ("--regularization", "0", "regularization"), ("--epsilon", "nan", "epsilon"),
    ("--col_weights", "inverse_power", "col_weights"),  # only with --objective wals
])
def test_cli_and_library_refuse_with_the_same_rule(flag, value, keyword, capsys):
    """One rule, two names: the command line's message is the library's with the flag name."""
    with pytest.raises(SystemExit) as e:
        _minimal_args(flag, value)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    from trainer.wals import WALSModel

    lib_value = {"--n_embeds": 0, "--num_epochs": 0, "--seed": -1, "--regularization": 0.0,
                 "--epsilon": float("nan"), "--col_weights": "inverse_power"}[flag]
    with pytest.raises(hparams.HyperparameterError) as lib:
        WALSModel(**{keyword: lib_value})
    assert lib.value.name == keyword
    assert lib.value.message(flag) in err, (lib.value.message(flag), err)


def test_weighting_uses_the_same_rules():
    from trainer.weights import Weighting

    assert Weighting().objective == hparams.DEFAULTS.objective
    with pytest.raises(TrainerInputError, match="unobserved_weight must be >= 0"):
        Weighting(unobserved_weight=-1.0)


# --------------------------------------------------------------------------- device policy
def test_device_policy_constants_and_memory_cap(monkeypatch):
    assert device_policy.is_gpu("/GPU:0") and device_policy.is_gpu("/job:localhost/replica:0/task:0/device:GPU:1")
    assert not device_policy.is_gpu("/CPU:0")
    assert device_policy.max_batch_floats("/CPU:0") == device_policy.CPU_MAX_BATCH_FLOATS == 1 << 21
    assert device_policy.batches_in_flight("/CPU:0") == device_policy.CPU_BATCHES_IN_FLIGHT == 2
    assert device_policy.batches_in_flight("/GPU:0") == 1
    # a GPU: 2^24 floats, less where the device's memory is known and small
    monkeypatch.setattr(device_policy, "memory_bytes", lambda d: None)
    assert device_policy.max_batch_floats("/GPU:0") == device_policy.GPU_MAX_BATCH_FLOATS == 1 << 24
    monkeypatch.setattr(device_policy, "memory_bytes", lambda d: 80 << 30)
    assert device_policy.max_batch_floats("/GPU:0") == 1 << 24
    monkeypatch.setattr(device_policy, "memory_bytes", lambda d: 1 << 30)
    assert device_policy.max_batch_floats("/GPU:0", 4) == (1 << 30) // (32 * 4)
    assert device_policy.max_batch_floats("/GPU:0", 8) == (1 << 30) // (32 * 8)


def test_default_device_is_a_visible_one():
    import tensorflow as tf

    d = device_policy.default_device()
    assert d == ("/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0")
    assert device_policy.resolve(None) == d and device_policy.resolve("/CPU:0") == "/CPU:0"


def test_float32_matmul_is_full_precision_on_every_device(device):
    """With TensorFloat-32 (on by default on Ampere and later GPUs) a float32 matmul rounds its
    inputs to 10 mantissa bits (u ≈ 2⁻¹¹); the solver's error analysis needs u = 2⁻²⁴.
    resolve() turns it off on a GPU; every entry must then be within the float32 bound
    γ_k·(|A||B|) of the float64 product (Higham, ASNA, §3.5)."""
    import tensorflow as tf

    assert device_policy.resolve(device) == device
    if device_policy.is_gpu(device):
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    rng = np.random.default_rng(0)
    k = 256
    a = rng.standard_normal((64, k)).astype(np.float32)
    b = rng.standard_normal((k, 48)).astype(np.float32)
    with tf.device(device):
        got = tf.linalg.matmul(tf.constant(a), tf.constant(b)).numpy().astype(np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    u = 2.0**-24
    bound = (k * u / (1 - k * u)) * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert np.all(np.abs(got - exact) <= bound), float(np.max(np.abs(got - exact) / bound))
