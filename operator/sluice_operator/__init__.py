"""The Sluice operator: turns IngestPipeline objects into running receiver/publisher pipelines.

Layers, lowest first (each imports only from the ones below it):
- ``_cogs``: settings, naming, hashing and condition helpers; no I/O.
- ``model``: ``render(name, namespace, spec)`` -> manifests; pure, imports no Kubernetes client.
- ``_core``: the Kubernetes side: apply, prune, status, leader election, the kopf handlers.
- ``cli``: ``sluice-operator``, which wraps ``kopf run``.
"""

GROUP = "sluice.dev"
VERSION = "v1alpha1"
PLURAL = "ingestpipelines"
KIND = "IngestPipeline"
