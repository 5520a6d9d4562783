"""The names a MONAI Label app serves (models, strategies, trainers, scoring methods), read cheaply.

``MONAILabelApp.info()`` also asks the datastore for its status (a DICOMweb query), too slow to run on
the event loop for every request; the app keeps its tasks in these attributes (MONAI Label 0.8.5,
checked by `routes.check_monailabel_contract`).
"""

from __future__ import annotations

from typing import Any

#: kind -> attribute of ``MONAILabelApp`` holding ``{name: task}``.
TASK_ATTRIBUTES = {"infers": "_infers", "strategies": "_strategies", "trainers": "_trainers",
                   "scoring": "_scoring_methods"}


def served_names(instance: Any, kind: str) -> list[str]:
    """Sorted names of the app's tasks of ``kind`` (a key of `TASK_ATTRIBUTES`)."""
    tasks = getattr(instance, TASK_ATTRIBUTES[kind], None) or {}
    return sorted(tasks)
