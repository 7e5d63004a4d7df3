"""What the management API answers about models, vmodels, tenants and the fleet: plain values,
derived from the registry by ``ModelManager`` and turned into messages at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.records import FailureRecord, InstanceRecord, ModelInfo, ModelState


@dataclass(frozen=True)
class CopyStatus:
    pod_id: str
    state: ModelState
    time_ms: int


@dataclass(frozen=True)
class ModelStatus:
    """A model's status as ``getModelStatus`` answers it (``ModelManager.status``)."""

    state: ModelState
    errors: list[str] = field(default_factory=list)
    copies: list[CopyStatus] = field(default_factory=list)
    """The copies on live pods, and the pods whose recent load failed that hold no copy (as
    LOADING_FAILED), newest first."""
    failures: dict[str, FailureRecord] = field(default_factory=dict)
    """Pod id -> its load failure that has not expired yet."""
    blocked: bool = False
    """No pod loads or serves it: pods died loading it (``clear_failures`` lifts it)."""
    changes_at_ms: int = 0
    """When this status changes by time alone (its oldest failure expires), ``clock_ms`` time;
    0: it changes only with the records."""


NOT_FOUND_STATUS = ModelStatus(ModelState.NOT_FOUND)


@dataclass(frozen=True)
class FleetView:
    pods: list[InstanceRecord]
    models_registered: int
    models_loaded: int
    copies: int
    janitor: str = ""


@dataclass(frozen=True)
class TenantUse:
    tenant: str
    max_models: int
    max_loaded_bytes: int
    models_registered: int
    loaded_bytes: int
    """Bytes of its models loaded or loading on live pods, every copy counted."""


@dataclass(frozen=True)
class VModelStatus:
    """``status`` is one of NOT_FOUND, DEFINED, TRANSITIONING, TRANSITION_FAILED."""

    status: str
    active_model_id: str = ""
    target_model_id: str = ""
    active: ModelStatus = NOT_FOUND_STATUS
    target: ModelStatus | None = None
    owner: str = ""


@dataclass(frozen=True)
class SetVModel:
    vmodel_id: str
    target_model_id: str
    owner: str = ""
    update_only: bool = False
    model_info: ModelInfo | None = None
    auto_delete_target: bool = False
    load_now: bool = False
    force: bool = False
    sync: bool = False
    expected_target_model_id: str = ""
