"""Where a prediction's and a training's objects live in the object store.

The API stores data-URI inputs there, the activities stage and remove them: both derive the
keys from the id here, so retention removes everything of a prediction by one prefix.
"""

from __future__ import annotations


def prediction_prefix(prediction_id: str) -> str:
    """Everything of a prediction: staged inputs and output files."""
    return f"predictions/{prediction_id}/"


def prediction_inputs(prediction_id: str) -> str:
    """A prediction's staged input files."""
    return f"{prediction_prefix(prediction_id)}inputs/"


def training_prefix(training_id: str) -> str:
    """Where a training's weights (and, while it runs, its input files) live."""
    return f"trainings/{training_id}/"


def training_inputs(training_id: str) -> str:
    """Where a training's staged input files live until it ends."""
    return f"{training_prefix(training_id)}inputs/"


def build_archive(build_id: str) -> str:
    """A pushed model's archive, from the push until its build ends."""
    return f"builds/{build_id}/model-archive"


def managed_weight_file(sha256: str) -> str:
    """A file of cog.yaml's managed weights, fetched or copied at push (kept: versions
    refer to it by content)."""
    return f"weights/sha256/{sha256}"
