"""The answer to an unexpected error: a trace id for the caller, the exception for the log."""

from __future__ import annotations

import logging
import re

from mesh.edge.status import internal_error


def test_an_unexpected_error_is_logged_under_the_trace_id_the_caller_gets(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="mesh.edge.status")
    try:
        raise ValueError("secret path /srv/models/x")
    except ValueError:
        message = internal_error("ModelStreamInfer")
    match = re.fullmatch(r"internal error \(trace id ([0-9a-f]{16})\)", message)
    assert match, message
    (record,) = caplog.records
    assert match.group(1) in record.getMessage() and "ModelStreamInfer" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "secret" not in message


def test_each_error_gets_its_own_trace_id() -> None:
    ids = set()
    for _ in range(3):
        try:
            raise RuntimeError
        except RuntimeError:
            ids.add(internal_error("ModelInfer"))
    assert len(ids) == 3
