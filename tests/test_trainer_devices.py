"""Several devices: the row solves of a half-sweep spread over them (trainer.plan, trainer.wals).

TensorFlow lets the CPU be split into logical devices before its runtime starts, so these run
in a fresh interpreter (tests/processes.py) with three logical CPUs: the plan must put batches
on every device, the batch data must live there, and the factors must equal a one-device fit's
bit for bit (every batch is solved from the same inputs wherever it runs).
"""
from __future__ import annotations

import json
import os
import sys
import textwrap

from tests.processes import run_in_group

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
    from tests.trainer_fixtures import taste_ratings
    from trainer.sparse import CSR
    from trainer.wals import WALSModel

    m = CSR.from_dense(taste_ratings(300, 120, 6, np.random.default_rng(5)))
    out = {}
    for solver in ("cholesky", "cg"):
        fits = {}
        for name, devices in (("one", "/CPU:0"), ("three", ["/CPU:0", "/CPU:1", "/CPU:2"])):
            model = WALSModel(factors=24, regularization=0.5, iterations=3, solver=solver,
                              max_batch_floats=4000, device=devices, backend="tensorflow")
            fits[name] = model.fit(m)
            if name == "three":
                plan, _ = model.prepare(m)
                out[solver + "_plan_devices"] = sorted(
                    {plan.device_of(b) for b in plan.batches})
                out[solver + "_data_devices"] = sorted(
                    {b.cols.device.split("/")[-1] for b in plan.batches})
                out[solver + "_batches"] = len(plan.batches)
        out[solver + "_equal"] = bool(
            np.array_equal(fits["one"].user_factors, fits["three"].user_factors)
            and np.array_equal(fits["one"].item_factors, fits["three"].item_factors))
        out[solver + "_nonzero"] = float(np.abs(fits["one"].item_factors).max())
    print("RESULT " + json.dumps(out))
    """
)


def test_three_logical_devices_give_the_one_device_factors():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = run_in_group([sys.executable, "-c", _SCRIPT], timeout=600, cwd=repo,
                        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    for solver in ("cholesky", "cg"):
        assert got[solver + "_batches"] >= 6, got  # enough batches to spread
        assert got[solver + "_plan_devices"] == ["/CPU:0", "/CPU:1", "/CPU:2"], got
        assert got[solver + "_data_devices"] == ["device:CPU:0", "device:CPU:1", "device:CPU:2"], got
        assert got[solver + "_nonzero"] > 0, got
        assert got[solver + "_equal"], got
