"""GA360 -> WALS recommendations: the preprocessing pipeline and the trainer.

``pip install .`` installs the pipeline's dependencies (Beam, tf.Transform, TensorFlow): this
is what Dataflow workers install from ``--setup_file``. ``pip install .[test]`` adds the test
tools. For a lean trainer-only package (a Vertex AI job on a prebuilt TensorFlow image),
build with ``GA_RECS_TRAINER_ONLY=1 python setup.py sdist``: it then requires NumPy and Numba
besides the image's TensorFlow.
"""
import os

import setuptools

PIPELINE_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",
    "numpy>=1.26,<3",
    "pyarrow>=14",
    "orjson>=3.9",  # the line readers' JSON decoder (json stays the fallback and the reference)
    "numba>=0.60",  # the trainer's CPU backend (trainer/cpu_cg.py)
]
# plus TensorFlow, which the training image provides; numba: the CPU backend (without it the
# trainer runs its TensorFlow kernels on the CPU too)
TRAINER_REQUIRES = ["numpy>=1.26,<3", "numba>=0.60"]
TEST_REQUIRES = ["pytest==8.*", "pandas>=2.2", "duckdb==2.0.0"]
# benchmarks/: the peer library, plots, memory polling (pip install -e ".[test,bench]").
BENCH_REQUIRES = ["implicit==0.7.3", "scipy>=1.11", "matplotlib==3.11.2", "psutil==7.2.2"]
# The TensorBoard viewer (pip install ".[tensorboard]"; tensorboard --logdir OUTPUT_DIR/tensorboard).
# TensorFlow 2.21 no longer depends on tensorboard; the trainer writes its event files with
# tf.summary either way. 2.21.x is the release that matches TensorFlow 2.21 (its protobuf and
# grpcio ranges fit).
TENSORBOARD_REQUIRES = ["tensorboard==2.21.*"]

HERE = os.path.dirname(os.path.abspath(__file__))
# The trainer-only sdist has no preprocess/ folder: installing it (on Vertex AI, where the
# variable is not set) must stay lean too.
trainer_only = os.environ.get("GA_RECS_TRAINER_ONLY") == "1" or not os.path.isdir(
    os.path.join(HERE, "preprocess")
)

setuptools.setup(
    name="ga360-wals-recommender",
    version="0.1.0",
    description="GA360 sessions -> tf.Transform/Beam preprocessing -> WALS recommendations in TF 2",
    python_requires=">=3.10",
    packages=["trainer", "schemas"] if trainer_only else setuptools.find_packages(
        include=["preprocess", "preprocess.*", "trainer", "trainer.*", "schemas"]
    ),
    package_data={"schemas": ["*.sql", "*.md", "*.json"]},
    include_package_data=True,
    install_requires=TRAINER_REQUIRES if trainer_only else PIPELINE_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "bench": BENCH_REQUIRES, "tensorboard": TENSORBOARD_REQUIRES},
)
