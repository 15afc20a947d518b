"""Data contracts shared by the preprocessing pipeline and the trainer.

This package holds files, not logic: the BigQuery SQL, the GA360 input description and
the TFRecord feature spec. It imports nothing heavy so both sides can use it (the trainer
runs in a lean image without Beam or tf.Transform).
"""
from __future__ import annotations

import pathlib

SCHEMA_DIR = pathlib.Path(__file__).resolve().parent


def read_text(name: str) -> str:
    """Returns the text of a contract file in this package (e.g. ``ga360_interactions.sql``)."""
    return (SCHEMA_DIR / name).read_text(encoding="utf-8")
