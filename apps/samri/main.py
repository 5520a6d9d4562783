"""SAMRI (Segment Anything for MRI) as a MONAI Label app: interactive 2D/3D segmentation.

Start it with::

    monailabel start_server --app apps/samri --studies data/studies \\
        --conf model samri_lite --conf precompute true --host 127.0.0.1 --port 8000

``--conf`` keys are documented in ``lib/configs/settings.py``. Constructing the app is cheap (the
server constructs it again in a subprocess for every train and scoring job): the network loads on
the first infer request.
"""

from __future__ import annotations

import logging
import os
from tempfile import gettempdir
from typing import Any

import samri
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib.configs.samri import SamriConfig
from lib.configs.settings import AppSettings
from lib.infers.errors import unknown_image
from lib.infers.runtime import SamriRuntime
from lib.infers.samri_infer import DATASTORE_IMAGE_KEY, IMAGE_FIELD_KEY

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """Wires `SamriConfig` (infer tasks ``samri_2d``, ``samri_3d``; trainer ``samri``) over one `SamriRuntime`."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.settings = AppSettings.from_conf(conf, app_dir=app_dir, studies=studies)
        self.runtime = SamriRuntime(settings=self.settings)
        self.task_config = SamriConfig()
        self.task_config.init("samri", os.path.join(app_dir, "model"), conf, None, runtime=self.runtime)
        logger.info("SAMRI app: %s", self.settings.summary())
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            logger.info("tip: start the server with OMP_WAIT_POLICY=PASSIVE; with busy cores, spinning OpenMP "
                        "threads make a ~60 ms click take ~1 s")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="SAMRI",
                         description="Segment Anything for MRI: interactive 2D and 3D segmentation",
                         version=samri.__version__, labels=list(self.settings.labels))

    def init_datastore(self):
        """A DICOMweb ``--studies`` URL (Orthanc, for OHIF) gets SAMRI's datastore: MR series, DICOM SEG
        labels, and no dcmqi download or any request except to that URL (see lib/datastore)."""
        if self.studies.startswith(("http://", "https://")):
            from lib.datastore import init_dicomweb_datastore

            self.studies = self.studies.rstrip("/").strip()
            return init_dicomweb_datastore(self.studies, conf=self.conf)
        return super().init_datastore()

    def init_infers(self) -> dict[str, InferTask]:
        return self.task_config.infer()

    def init_trainers(self) -> dict[str, TrainTask]:
        return {self.task_config.trainer_name: self.task_config.trainer()}

    def init_strategies(self) -> dict[str, Strategy]:
        """MONAI Label's ``random`` and ``first``, plus ``samri_uncertainty``/``samri_novelty``/``samri_combined``."""
        from lib.activelearning import samri_strategies

        return {"random": Random(), "first": First(), **samri_strategies(self.runtime)}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        """``samri_uncertainty`` and ``samri_novelty`` (run at start, after training, after each next sample)."""
        from lib.activelearning import samri_scoring_methods

        return samri_scoring_methods(self.runtime)

    def async_scoring(self, method, params=None):
        """MONAI Label's scoring jobs; an app built outside a server (tests, scripts) has none to ask."""
        if not self._server_mode:
            logger.debug("not serving: scoring jobs run only in a server (call app.scoring(...) directly)")
            return {}
        return super().async_scoring(method, params)

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Reject unknown image ids with 404 before MONAI Label turns them into an empty path."""
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and image and not os.path.exists(image):
            # exact type: DICOMweb/XNAT/DSA stores subclass it but would download the series here
            if type(store) is LocalDatastore and not store.get_image_uri(image):
                raise unknown_image(image)
            request = {**request, DATASTORE_IMAGE_KEY: True}
        elif isinstance(image, str) and os.path.dirname(os.path.realpath(image)) == os.path.realpath(gettempdir()):
            request = {**request, IMAGE_FIELD_KEY: "file"}  # the endpoint saved an uploaded file there
        return super().infer(request, datastore)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """Active learning's pick, and its embeddings precomputed in the background."""
        result = super().next_sample(request)
        path = result.get("path") if isinstance(result, dict) else None
        if path and os.path.isfile(path):
            self.runtime.schedule_precompute(path)
        return result

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["samri"] = self.runtime.status()
        return meta
