"""The kopf layer: resource events -> the reconciler, nothing else.

Predictors (``predictors.v1alpha1.serving.kserve.io``) and InferenceServices annotated
``serving.kserve.io/deploymentMode: ModelMesh`` (``inferenceservices.v1beta1.serving.kserve.io``):
create, update and resume apply the resource; delete (behind the finalizer ``mesh.io/controller``)
deletes its vmodel, retried while the mesh cannot be reached. An InferenceService gets the
annotation ``mesh.io/vmodel-id`` naming the id clients call (its status schema is KServe's and
has no field for it; a Predictor's status has ``vModelId``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from mesh.k8s.reconciler import Reconciler
from mesh.k8s.resources import Kind, ResourceRef
from mesh.k8s.spec import DEPLOYMENT_MODE, MODELMESH
from mesh_common.errors import Unavailable

log = logging.getLogger(__name__)

FINALIZER = "mesh.io/controller"
VMODEL_ANNOTATION = "mesh.io/vmodel-id"
STORAGE_PREFIX = "mesh.io"
"""kopf keeps its progress and last-handled spec in annotations under this prefix (not in the
status, whose schema is ModelMesh's and KServe's)."""
DELETE_RETRY_S = 5.0


@dataclass
class NamespaceScope:
    """Which namespaces the controller serves: a list (empty: all of them), or those whose labels
    hold ``selector`` (``(key, value)``), learnt from namespace events into ``labelled``."""

    namespaces: tuple[str, ...] = ()
    selector: tuple[str, str] | None = None
    labelled: set[str] = field(default_factory=set)

    @property
    def several(self) -> bool:
        """Whether resources of more than one namespace may share the fleet (ids then carry it)."""
        return self.selector is not None or len(self.namespaces) != 1

    def serves(self, namespace: str) -> bool:
        if self.selector is not None:
            return namespace in self.labelled
        return not self.namespaces or namespace in self.namespaces

    def namespace_seen(self, name: str, labels: Mapping[str, str], *, deleted: bool = False) -> bool:
        """Record a namespace's labels; True when it has just become served."""
        if self.selector is None:
            return False
        key, value = self.selector
        served = not deleted and labels.get(key) == value
        before = name in self.labelled
        if served:
            self.labelled.add(name)
        else:
            self.labelled.discard(name)
        return served and not before

    def kopf_scope(self) -> dict[str, Any]:
        if self.selector is None and self.namespaces:
            return {"namespaces": list(self.namespaces)}
        return {"clusterwide": True}


Lister = Callable[[str], Awaitable[list[dict[str, Any]]]]
"""Lists the resources of a namespace (both kinds), for a namespace that has just become served."""


class Handlers:
    """The handlers kopf calls, bound to one reconciler."""

    def __init__(self, reconciler: Reconciler, scope: NamespaceScope, lister: Lister | None = None) -> None:
        self._reconciler = reconciler
        self._scope = scope
        self._lister = lister

    def serves(self, namespace: str | None, **_: Any) -> bool:
        return namespace is not None and self._scope.serves(namespace)

    async def apply(self, body: Mapping[str, Any], patch: dict[str, Any], **_: Any) -> None:
        resource = _plain(body)
        vmodel_id = await self._reconciler.apply(resource)
        annotations = (resource.get("metadata") or {}).get("annotations") or {}
        named = annotations.get(VMODEL_ANNOTATION) == vmodel_id
        if vmodel_id is not None and Kind.of(resource) is Kind.INFERENCE_SERVICE and not named:
            patch.setdefault("metadata", {}).setdefault("annotations", {})[VMODEL_ANNOTATION] = vmodel_id

    async def delete(self, body: Mapping[str, Any], **_: Any) -> None:
        resource = _plain(body)
        try:
            await self._reconciler.delete(resource)
        except Unavailable as exc:
            raise kopf.TemporaryError(
                f"{ResourceRef.of(resource)}: the mesh did not answer ({exc}); the vmodel is deleted "
                "once it does",
                delay=DELETE_RETRY_S,
            ) from None

    async def namespace_event(self, body: Mapping[str, Any], type: str | None = None, **_: Any) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        if self._scope.namespace_seen(name, meta.get("labels") or {}, deleted=type == "DELETED"):
            log.info("namespace %s is served now: registering its resources", name)
            for resource in await self._lister(name) if self._lister else []:
                await self._reconciler.apply(resource)


def register(
    registry: kopf.OperatorRegistry, handlers: Handlers, scope: NamespaceScope
) -> list[dict[str, str]]:
    """Attach the handlers to ``registry`` for both kinds (and namespaces, with a selector);
    returns the resources watched (``group``, ``version``, ``plural``)."""
    watched = []
    for kind in Kind:
        where = {"group": kind.group, "version": kind.version, "plural": kind.plural}
        filters: dict[str, Any] = {"registry": registry, "when": handlers.serves, **where}
        if kind is Kind.INFERENCE_SERVICE:
            filters["annotations"] = {DEPLOYMENT_MODE: MODELMESH}
        kopf.on.resume(id=f"{kind.plural}-resume", **filters)(handlers.apply)
        kopf.on.create(id=f"{kind.plural}-create", **filters)(handlers.apply)
        kopf.on.update(id=f"{kind.plural}-update", **filters)(handlers.apply)
        kopf.on.delete(id=f"{kind.plural}-delete", **filters)(handlers.delete)
        watched.append(where)
    if scope.selector is not None:
        kopf.on.event("", "v1", "namespaces", registry=registry)(handlers.namespace_event)
    kopf.on.login(registry=registry)(kopf.login_with_service_account)
    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
    return watched


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=STORAGE_PREFIX)
    settings.peering.standalone = True


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as a plain dict (kopf passes a read-only view)."""
    return {k: body[k] for k in body}
