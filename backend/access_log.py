"""uvicorn's logging for ``python -m backend serve``, with query strings kept out of the access log.

Query strings can carry tokens (a proxy's or a client's); the path alone says which route was hit.
"""
from __future__ import annotations

import copy
import logging


class DropQueryString(logging.Filter):
    """Cuts ``?…`` off the path of uvicorn's access records (args: client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = args[:2] + (args[2].split("?", 1)[0],) + args[3:]
        return True


def log_config() -> dict:
    """uvicorn's default logging config plus ``DropQueryString`` on its access logger."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["drop_query_string"] = {"()": DropQueryString}
    config["loggers"]["uvicorn.access"]["filters"] = ["drop_query_string"]
    return config
