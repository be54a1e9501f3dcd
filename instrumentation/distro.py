"""StudyIn's OpenTelemetry distro: what ``opentelemetry-instrument`` does with this package installed.

``opentelemetry-instrument`` loads one *distro* (entry point group ``opentelemetry_distro``) to set
defaults, then one *configurator* (``opentelemetry_configurator``) to build the SDK from the
``OTEL_*`` variables, then every instrumentor (``opentelemetry_instrumentor``: ours is
``studyin``). Without any distro it configures nothing, so the documented
``opentelemetry-instrument uvicorn app:app`` exported nothing; the stock ``opentelemetry-distro``
defaults every signal to OTLP, which aborts start-up where no OTLP exporter is installed.

:class:`StudyInDistro` sets only defaults (a variable already set wins):

* ``OTEL_TRACES_EXPORTER=studyin_redis``: spans to the Redis bus;
* ``OTEL_METRICS_EXPORTER=none``: the request-duration histograms have no default destination
  (``prometheus`` serves them on port 9464, this package depends on its exporter; ``otlp`` needs an
  OTLP exporter installed);
* ``OTEL_LOGS_EXPORTER=studyin_redis``: log records to the same bus, like the traces (the logs
  exporter keeps only ``studyin.*`` events and drops the application's own log records). With it,
  a tracker built without a carrier sends events that would wait in an open span as log records
  at once (:func:`.carriers.default_carrier`); with ``none``, as span events.

:class:`StudyInConfigurator` is the SDK's own configurator, as the stock distro's is. Which distro
and configurator run when several packages provide one: ``OTEL_PYTHON_DISTRO`` and
``OTEL_PYTHON_CONFIGURATOR`` name them (``studyin``); unset, the first entry point found wins
(an order nothing guarantees), see docs/instrumentation.md.
"""

from __future__ import annotations

import os
from typing import Any, Final

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

DISTRO_NAME: Final = "studyin"
"""The entry point name of the distro and the configurator (``OTEL_PYTHON_DISTRO=studyin``)."""

DEFAULTS: Final[dict[str, str]] = {
    "OTEL_TRACES_EXPORTER": "studyin_redis",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "studyin_redis",
}
"""What the distro sets when the variable is unset (documented in docs/instrumentation.md)."""


class StudyInDistro(BaseDistro):  # type: ignore[misc]
    """Sets :data:`DEFAULTS` for the ``OTEL_*`` variables left unset."""

    def _configure(self, **kwargs: Any) -> None:
        for variable, value in DEFAULTS.items():
            os.environ.setdefault(variable, value)


class StudyInConfigurator(_OTelSDKConfigurator):
    """The SDK's configurator (tracer, meter and logger providers from the ``OTEL_*`` variables)."""
