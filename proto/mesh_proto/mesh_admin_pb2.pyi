from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchModelsRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class ModelChange(_message.Message):
    __slots__ = ("model", "vmodel", "deleted_model_id", "deleted_vmodel_id", "synced")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VMODEL_FIELD_NUMBER: _ClassVar[int]
    DELETED_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    model: ModelState
    vmodel: VModelSummary
    deleted_model_id: str
    deleted_vmodel_id: str
    synced: bool
    def __init__(self, model: _Optional[_Union[ModelState, _Mapping]] = ..., vmodel: _Optional[_Union[VModelSummary, _Mapping]] = ..., deleted_model_id: _Optional[str] = ..., deleted_vmodel_id: _Optional[str] = ..., synced: _Optional[bool] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("model_id", "type", "tenant", "status", "loaded_copies", "loading_copies", "failed_copies", "failures", "blocked", "size_bytes")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOADED_COPIES_FIELD_NUMBER: _ClassVar[int]
    LOADING_COPIES_FIELD_NUMBER: _ClassVar[int]
    FAILED_COPIES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    type: str
    tenant: str
    status: str
    loaded_copies: int
    loading_copies: int
    failed_copies: int
    failures: _containers.RepeatedCompositeFieldContainer[LoadFailure]
    blocked: bool
    size_bytes: int
    def __init__(self, model_id: _Optional[str] = ..., type: _Optional[str] = ..., tenant: _Optional[str] = ..., status: _Optional[str] = ..., loaded_copies: _Optional[int] = ..., loading_copies: _Optional[int] = ..., failed_copies: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[LoadFailure, _Mapping]]] = ..., blocked: _Optional[bool] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class LoadFailure(_message.Message):
    __slots__ = ("pod_id", "reason", "time_ms")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    reason: str
    time_ms: int
    def __init__(self, pod_id: _Optional[str] = ..., reason: _Optional[str] = ..., time_ms: _Optional[int] = ...) -> None: ...

class ClearFailuresRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ClearFailuresResponse(_message.Message):
    __slots__ = ("crashes", "failures", "blocked")
    CRASHES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    crashes: int
    failures: int
    blocked: bool
    def __init__(self, crashes: _Optional[int] = ..., failures: _Optional[int] = ..., blocked: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("model_id", "type", "path", "status", "size_bytes", "errors")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    type: str
    path: str
    status: str
    size_bytes: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., type: _Optional[str] = ..., path: _Optional[str] = ..., status: _Optional[str] = ..., size_bytes: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "vmodels", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    VMODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    vmodels: _containers.RepeatedCompositeFieldContainer[VModelSummary]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., vmodels: _Optional[_Iterable[_Union[VModelSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VModelSummary(_message.Message):
    __slots__ = ("vmodel_id", "active_model_id", "target_model_id", "owner")
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    active_model_id: str
    target_model_id: str
    owner: str
    def __init__(self, vmodel_id: _Optional[str] = ..., active_model_id: _Optional[str] = ..., target_model_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class PodStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("model_id", "size_bytes", "last_used_ms", "in_flight")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_MS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    size_bytes: int
    last_used_ms: int
    in_flight: int
    def __init__(self, model_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., last_used_ms: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...

class PodStatusResponse(_message.Message):
    __slots__ = ("pod_id", "capacity_bytes", "used_bytes", "loads", "load_failures", "evictions", "unloads", "loaded", "version", "janitor_rounds")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    UNLOADS_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    JANITOR_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    capacity_bytes: int
    used_bytes: int
    loads: int
    load_failures: int
    evictions: int
    unloads: int
    loaded: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    version: str
    janitor_rounds: int
    def __init__(self, pod_id: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., loads: _Optional[int] = ..., load_failures: _Optional[int] = ..., evictions: _Optional[int] = ..., unloads: _Optional[int] = ..., loaded: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., version: _Optional[str] = ..., janitor_rounds: _Optional[int] = ...) -> None: ...

class FleetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PodSummary(_message.Message):
    __slots__ = ("pod_id", "endpoint", "capacity_bytes", "used_bytes", "models_loaded", "loads_in_flight", "requests_in_flight", "request_rate", "shutting_down", "version", "started_ms", "devices")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_LOADED_FIELD_NUMBER: _ClassVar[int]
    LOADS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_FIELD_NUMBER: _ClassVar[int]
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    endpoint: str
    capacity_bytes: int
    used_bytes: int
    models_loaded: int
    loads_in_flight: int
    requests_in_flight: int
    request_rate: float
    shutting_down: bool
    version: str
    started_ms: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceSummary]
    def __init__(self, pod_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., models_loaded: _Optional[int] = ..., loads_in_flight: _Optional[int] = ..., requests_in_flight: _Optional[int] = ..., request_rate: _Optional[float] = ..., shutting_down: _Optional[bool] = ..., version: _Optional[str] = ..., started_ms: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceSummary, _Mapping]]] = ...) -> None: ...

class DeviceSummary(_message.Message):
    __slots__ = ("name", "capacity_bytes", "used_bytes", "model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity_bytes: int
    used_bytes: int
    model: str
    def __init__(self, name: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class FleetStatusResponse(_message.Message):
    __slots__ = ("pods", "models_registered", "models_loaded", "copies", "janitor")
    PODS_FIELD_NUMBER: _ClassVar[int]
    MODELS_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    MODELS_LOADED_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    JANITOR_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[PodSummary]
    models_registered: int
    models_loaded: int
    copies: int
    janitor: str
    def __init__(self, pods: _Optional[_Iterable[_Union[PodSummary, _Mapping]]] = ..., models_registered: _Optional[int] = ..., models_loaded: _Optional[int] = ..., copies: _Optional[int] = ..., janitor: _Optional[str] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class CopyDetail(_message.Message):
    __slots__ = ("pod_id", "state", "since_ms", "why", "request_rate", "queue_ms")
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    pod_id: str
    state: str
    since_ms: int
    why: str
    request_rate: float
    queue_ms: float
    def __init__(self, pod_id: _Optional[str] = ..., state: _Optional[str] = ..., since_ms: _Optional[int] = ..., why: _Optional[str] = ..., request_rate: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class ModelEvent(_message.Message):
    __slots__ = ("time_ms", "pod_id", "what")
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    time_ms: int
    pod_id: str
    what: str
    def __init__(self, time_ms: _Optional[int] = ..., pod_id: _Optional[str] = ..., what: _Optional[str] = ...) -> None: ...

class ModelDetail(_message.Message):
    __slots__ = ("model_id", "type", "path", "tenant", "status", "size_bytes", "load_ms", "min_copies", "max_copies", "copies", "history", "errors")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_COPIES_FIELD_NUMBER: _ClassVar[int]
    MAX_COPIES_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    type: str
    path: str
    tenant: str
    status: str
    size_bytes: int
    load_ms: int
    min_copies: int
    max_copies: int
    copies: _containers.RepeatedCompositeFieldContainer[CopyDetail]
    history: _containers.RepeatedCompositeFieldContainer[ModelEvent]
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., type: _Optional[str] = ..., path: _Optional[str] = ..., tenant: _Optional[str] = ..., status: _Optional[str] = ..., size_bytes: _Optional[int] = ..., load_ms: _Optional[int] = ..., min_copies: _Optional[int] = ..., max_copies: _Optional[int] = ..., copies: _Optional[_Iterable[_Union[CopyDetail, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[ModelEvent, _Mapping]]] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class SetTenantRequest(_message.Message):
    __slots__ = ("tenant", "max_models", "max_loaded_bytes")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    max_models: int
    max_loaded_bytes: int
    def __init__(self, tenant: _Optional[str] = ..., max_models: _Optional[int] = ..., max_loaded_bytes: _Optional[int] = ...) -> None: ...

class TenantStatus(_message.Message):
    __slots__ = ("tenant", "max_models", "max_loaded_bytes", "models_registered", "loaded_bytes")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    LOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    max_models: int
    max_loaded_bytes: int
    models_registered: int
    loaded_bytes: int
    def __init__(self, tenant: _Optional[str] = ..., max_models: _Optional[int] = ..., max_loaded_bytes: _Optional[int] = ..., models_registered: _Optional[int] = ..., loaded_bytes: _Optional[int] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStatus]
    def __init__(self, tenants: _Optional[_Iterable[_Union[TenantStatus, _Mapping]]] = ...) -> None: ...
