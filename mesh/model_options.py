"""The mesh's registration options carried in ModelMesh's model key JSON (tenant, copies), checked."""

from __future__ import annotations

import re
from typing import Any

from mesh_common.errors import InvalidInput, quoted

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_tenant(tenant: object, *, model_id: str = "") -> None:
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        prefix = f"model {quoted(model_id)}: " if model_id else ""
        raise InvalidInput(
            f"{prefix}tenant {quoted(tenant)} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def model_options(model_id: str, key: dict[str, Any]) -> dict[str, Any]:
    """The mesh's registration options carried in the model key JSON (ModelMesh's messages stay as they
    are): ``tenant`` (default ``default``), ``min_copies`` and ``max_copies``."""
    options: dict[str, Any] = {}
    tenant = key.get("tenant", "default")
    check_tenant(tenant, model_id=model_id)
    options["tenant"] = tenant
    for name, least in (("min_copies", 1), ("max_copies", 1)):
        value = key.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise InvalidInput(
                f"model {quoted(model_id)}: {name} must be an integer >= {least}, not {quoted(value)}"
            )
        options[name] = value
    if options.get("max_copies") and options.get("min_copies", 1) > options["max_copies"]:
        raise InvalidInput(
            f"model {quoted(model_id)}: min_copies {options['min_copies']} > "
            f"max_copies {options['max_copies']}"
        )
    return options
