"""What the controller knows about a resource: its kind, its reference and the ids it registers.

ModelMesh-serving's ids, kept: the vmodel id is the resource's name and the concrete model id is
``<vmodel id>__<source>-<hash>`` (``ksp`` for a Predictor, ``isvc`` for an InferenceService; the
hash is 10 hex digits of the SHA-1 of the spec), and the vmodel's owner is the source. When the
controller serves several namespaces, one fleet holds them all, so the vmodel id is
``<name>.<namespace>``: a namespace has no ``.``, so no two resources share an id.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any


class Kind(enum.Enum):
    """A kind of resource the controller watches: (kind, group, version, plural, ModelMesh source id)."""

    PREDICTOR = ("Predictor", "serving.kserve.io", "v1alpha1", "predictors", "ksp")
    INFERENCE_SERVICE = ("InferenceService", "serving.kserve.io", "v1beta1", "inferenceservices", "isvc")

    @property
    def kind(self) -> str:
        return self.value[0]

    @property
    def group(self) -> str:
        return self.value[1]

    @property
    def version(self) -> str:
        return self.value[2]

    @property
    def plural(self) -> str:
        return self.value[3]

    @property
    def source(self) -> str:
        """ModelMesh-serving's source id: the vmodel's owner and the concrete id's suffix."""
        return self.value[4]

    @property
    def resource(self) -> str:
        """``plural.version.group``, as kopf names a resource."""
        return f"{self.plural}.{self.version}.{self.group}"

    @classmethod
    def of(cls, body: dict[str, Any]) -> Kind:
        for kind in cls:
            if body.get("kind") == kind.kind:
                return kind
        raise ValueError(f"not a Predictor or InferenceService: kind {body.get('kind')!r}")


@dataclass(frozen=True)
class ResourceRef:
    """One resource: the key every map of the controller uses."""

    kind: Kind
    namespace: str
    name: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> ResourceRef:
        meta = body.get("metadata") or {}
        return cls(Kind.of(body), str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    def __str__(self) -> str:
        return f"{self.kind.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class IdScheme:
    """How a resource's name becomes a vmodel id: the name itself when the controller serves one
    namespace (as ModelMesh-serving, which ran a mesh per namespace), ``<name>.<namespace>`` when
    it serves several (one fleet holds them all)."""

    several_namespaces: bool = False

    def vmodel_id(self, ref: ResourceRef) -> str:
        return f"{ref.name}.{ref.namespace}" if self.several_namespaces else ref.name

    def model_id(self, ref: ResourceRef, spec: object) -> str:
        return f"{self.vmodel_id(ref)}__{ref.kind.source}-{spec_hash(spec)}"


def spec_hash(spec: object) -> str:
    """10 hex digits of the SHA-1 of the spec's canonical JSON (ModelMesh-serving: 5 bytes of SHA-1)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


@dataclass(frozen=True)
class Registration:
    """The model a resource registers: ``setVModel`` with ``autoDeleteTargetModel`` creates the
    concrete model ``model_id`` (``model_type``, ``path``, ``key`` JSON) and points the vmodel
    ``vmodel_id`` (owned by ``owner``) at it. ``tenant`` is the resource's namespace."""

    ref: ResourceRef
    vmodel_id: str
    model_id: str
    owner: str
    model_type: str
    path: str
    key: str
    tenant: str
