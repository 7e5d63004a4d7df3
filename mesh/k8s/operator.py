"""``mesh controller``: one wiring function builds the controller from its settings and runs kopf.

Standalone (one controller; no peering objects needed), the liveness endpoint on
``http://0.0.0.0:<liveness_port>/healthz``. Credentials: the pod's service account, else the
local kubeconfig.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from adapters import supported_types
from mesh.k8s.handlers import Handlers, NamespaceScope, configure, register
from mesh.k8s.meshapi import GrpcMeshApi
from mesh.k8s.reconciler import Reconciler
from mesh.k8s.resources import IdScheme, Kind
from mesh.k8s.statuswriter import KubeStatusWriter
from mesh.settings import ControllerSettings

log = logging.getLogger(__name__)


def scope_of(settings: ControllerSettings) -> NamespaceScope:
    return NamespaceScope(namespaces=tuple(dict.fromkeys(settings.namespaces)), selector=settings.selector())


async def run_controller(settings: ControllerSettings, *, stop_flag: asyncio.Event | None = None) -> None:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise ValueError(
                "no Kubernetes credentials: not in a pod with a service account, and no usable "
                f"kubeconfig ({exc})"
            ) from None
    api_client = client.ApiClient()
    scope = scope_of(settings)
    mesh = GrpcMeshApi(settings.target, timeout_s=settings.request_timeout_s)
    reconciler = Reconciler(
        mesh,
        KubeStatusWriter(api_client),
        ids=IdScheme(several_namespaces=scope.several),
        supported=supported_types(),
        grpc_endpoint=f"grpc://{settings.target}",
        http_endpoint=settings.http_endpoint,
        resync_s=settings.resync_s,
        backoff_s=settings.backoff_s,
        max_backoff_s=settings.max_backoff_s,
    )
    custom = client.CustomObjectsApi(api_client)

    async def lister(namespace: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(_list_resources, custom, namespace)

    registry = kopf.OperatorRegistry()
    register(registry, Handlers(reconciler, scope, lister), scope)
    kopf_settings = kopf.OperatorSettings()
    configure(kopf_settings)
    log.info(
        "controller: mesh at %s, namespaces %s, ids %s",
        settings.target,
        settings.namespace_selector or ", ".join(scope.namespaces) or "all",
        "<name>.<namespace>" if scope.several else "<name>",
    )
    try:
        async with reconciler:
            await kopf.operator(
                registry=registry,
                settings=kopf_settings,
                standalone=True,
                liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
                stop_flag=stop_flag,
                **scope.kopf_scope(),
            )
    finally:
        await mesh.close()
        api_client.close()


def _list_resources(custom: Any, namespace: str) -> list[dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException

    found: list[dict[str, Any]] = []
    for kind in Kind:
        try:
            listing = custom.list_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural)
        except ApiException as exc:
            if exc.status == 404:  # that kind's CRD is not installed
                continue
            raise
        for item in listing.get("items", []):
            item.setdefault("apiVersion", f"{kind.group}/{kind.version}")
            item.setdefault("kind", kind.kind)
            found.append(item)
    return found
