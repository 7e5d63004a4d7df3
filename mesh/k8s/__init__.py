"""The Kubernetes controller: Predictors and InferenceServices -> the mesh's public APIs.

``spec`` maps a resource to the model it registers, ``status`` maps the models' state to the
resource's status, ``reconciler`` (the core, no Kubernetes client) carries both out against a
pod's gRPC APIs, ``handlers`` are the thin kopf layer. The controller never talks to etcd.
"""
