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

from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import samri
from lib.configs.samri import SamriConfig
from lib.configs.settings import AppSettings
from lib.http_errors import unknown_image
from lib.infers.samri_infer import DATASTORE_IMAGE_KEY, IMAGE_FIELD_KEY
from lib.runtime import SamriRuntime
from lib.server import RequestLanes, harden_server, serving_fastapi_app
from lib.server.params import reject_final_save
from lib.server.settings import ServerSettings

logger = logging.getLogger(__name__)


def _is_local(store) -> bool:
    """A folder datastore (MONAI Label's or SAMRI's), not DICOMweb/XNAT/DSA (which subclass it)."""
    from monailabel.datastore.dicom import DICOMWebDatastore

    return isinstance(store, LocalDatastore) and not isinstance(store, DICOMWebDatastore)


def _env_cors_origins() -> tuple[str, ...]:
    """MONAI Label's ``MONAI_LABEL_CORS_ORIGINS`` (empty unless the operator set it)."""
    from monailabel.config import settings

    return tuple(str(o) for o in settings.MONAI_LABEL_CORS_ORIGINS or ())


class MyApp(MONAILabelApp):
    """Wires `SamriConfig` (infer tasks ``samri_2d``, ``samri_3d``; trainer ``samri``) over one `SamriRuntime`."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.settings = AppSettings.from_conf(conf, app_dir=app_dir, studies=studies)
        self.server_settings = ServerSettings.from_conf(conf, env_origins=_env_cors_origins())
        self.lanes = RequestLanes()
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

    def server_mode(self, mode: bool) -> None:
        """Called by the server right after it constructs the app: install the route hardening there."""
        super().server_mode(mode)
        fastapi_app = serving_fastapi_app() if mode else None
        if fastapi_app is not None:
            harden_server(fastapi_app, lanes=self.lanes, allowed_origins=self.server_settings.cors_origins,
                          max_body_bytes=self.server_settings.max_body_bytes,
                          expose_logs=self.server_settings.expose_logs)

    def init_datastore(self):
        """A DICOMweb ``--studies`` URL (Orthanc, for OHIF) gets SAMRI's datastore: MR series, DICOM SEG
        labels, and no dcmqi download or any request except to that URL (see lib/datastore). A folder
        gets `SamriLocalDatastore`: ids confined to it, labels checked, replaced labels kept."""
        if self.studies.startswith(("http://", "https://")):
            from lib.datastore import init_dicomweb_datastore

            self.studies = self.studies.rstrip("/").strip()
            return init_dicomweb_datastore(self.studies, conf=self.conf)
        from monailabel.config import settings

        from lib.datastore.local import SamriLocalDatastore

        logger.info("Init Datastore for: %s", self.studies)
        return SamriLocalDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                   auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                   read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def _load_sessions(self, load: bool = False):
        """MONAI Label's sessions, with ``uncompress`` archives checked before unpacking (no tar slip)."""
        if not load:
            return None
        from monailabel.config import settings

        from lib.datastore.sessions import SamriSessions

        return SamriSessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY)

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
        """Reject unknown image ids with 404 before MONAI Label turns them into an empty path, and never
        let an /infer result replace a finished label (``save_label`` with tag ``final``: 422)."""
        reject_final_save(request)
        image = request.get("image")
        store = datastore or self.datastore()
        uploaded = isinstance(image, str) and os.path.dirname(os.path.realpath(image)) == os.path.realpath(gettempdir())
        # the hardened route admits only ids and uploads; paths stay possible for in-process callers
        if isinstance(image, str) and image and not uploaded and not os.path.isabs(image) and os.sep not in image:
            if _is_local(store):  # DICOMweb would download the series to answer get_image_uri
                uri = store.get_image_uri(image)
                if not uri:
                    raise unknown_image(image)
                if os.path.exists(image):  # also a file in the server's folder: never read that one
                    request = {**request, "image": uri}
            request = {**request, DATASTORE_IMAGE_KEY: True}
        elif uploaded:
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
