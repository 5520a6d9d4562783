"""`SamriConfig`: the MONAI Label ``TaskConfig`` that wires SAMRI's tasks to the shared runtime."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask

from ..infers.samri_infer import SamriInfer
from ..runtime import SamriRuntime
from ..trainers.samri_trainer import TRAINER_NAME, SamriTrainer

logger = logging.getLogger(__name__)

#: task name -> mode
INFER_TASKS = {"samri_2d": "2d", "samri_3d": "3d"}


class SamriConfig(TaskConfig):
    """Infer tasks ``samri_2d`` and ``samri_3d`` and the trainer ``samri``, over one `SamriRuntime`.

    Call ``init(name, model_dir, conf, planner, runtime=...)`` before ``infer()``.
    """

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        runtime = kwargs.get("runtime")
        if not isinstance(runtime, SamriRuntime):
            raise TypeError("SamriConfig.init needs runtime=SamriRuntime(...)")
        self.runtime = runtime
        self.labels = list(runtime.settings.labels)

    def infer(self) -> dict[str, InferTask]:
        return {name: SamriInfer(name=name, runtime=self.runtime, mode=mode, labels=self.labels)
                for name, mode in INFER_TASKS.items()}

    def trainer(self) -> SamriTrainer:
        """The decoder trainer (``POST /train/samri``); its name is `TRAINER_NAME`."""
        return SamriTrainer(runtime=self.runtime)

    @property
    def trainer_name(self) -> str:
        return TRAINER_NAME
