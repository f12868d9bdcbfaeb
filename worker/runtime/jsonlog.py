"""Structured JSON logs: one object per line, event coordinates and timings, never patient data.

>>> import logging, io
>>> stream = io.StringIO(); h = logging.StreamHandler(stream); h.setFormatter(JsonFormatter())
>>> lg = logging.getLogger("doc"); lg.addHandler(h); lg.propagate = False
>>> lg.warning("hello", extra={"fields": {"offset": 3}})
>>> import json; json.loads(stream.getvalue())["offset"]
3
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # pydicom logs every oddity of real-world files, and decoder failures with tracebacks; the
    # outcome (with its reason) is in the finding or the dead letter instead.
    # Imported first because pydicom resets its logger's level when it is imported.
    import pydicom  # noqa: F401

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def log_event(logger: logging.Logger, msg: str, record: Any, **fields: Any) -> None:
    """Log one event's outcome with its Kafka coordinates (no payload, no patient data)."""
    if not logger.isEnabledFor(logging.DEBUG if msg == "finding" else logging.INFO):
        return
    base = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    logger.log(
        logging.DEBUG if msg == "finding" else logging.INFO,
        msg,
        extra={"fields": {**base, **fields}},
    )
