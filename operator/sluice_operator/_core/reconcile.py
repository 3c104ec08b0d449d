"""One reconcile of one IngestPipeline: resolve references, render, apply, prune, report status.

Level-based and idempotent: the kopf handlers, the child watches and the periodic resync all call
:func:`reconcile` with the latest object, and running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from sluice_operator import GROUP, KIND, VERSION
from sluice_operator._cogs import conditions as cond
from sluice_operator._cogs import naming
from sluice_operator._cogs.conditions import Condition
from sluice_operator._cogs.settings import OperatorSettings
from sluice_operator._core import events, kubeapi, metrics, probes
from sluice_operator._core.kubeapi import ApiError
from sluice_operator.model import SpecError, parse_fields, render
from sluice_operator.model.render import Credentials
from sluice_operator.model.spec import CA_KEY, TLS_CERT_KEY, is_edge, secret_uses

log = logging.getLogger(__name__)

# Kinds that render emits only sometimes; these are the only ones pruned (needs the "delete" verb).
PRUNABLE = ("NetworkPolicy", "ServiceAccount")
# The publisher's kinds, pruned only when a pipeline has become an edge one (spec.forward): only then does the
# operator need list and delete on them, and a pipeline that never forwards never asks for those verbs.
PUBLISHER_KINDS = ("Deployment", "Service", "PodDisruptionBudget")

# Set while this replica may write (it holds the Lease, or runs without election). Cleared the moment the Lease
# is lost, so handlers still in flight during kopf's shutdown write nothing behind the new leader's back.
ACTIVE = threading.Event()

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def lock_for(namespace: str, name: str) -> threading.Lock:
    """One lock per pipeline: kopf handlers and the resync workers never reconcile the same object at once."""
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def forget_except(live: set[tuple[str, str]]) -> None:
    """Drop the locks of deleted pipelines, so that CR churn does not grow the table forever."""
    with _locks_guard:
        for key in [k for k, lock in _locks.items() if k not in live and not lock.locked()]:
            del _locks[key]


def reconcile(body: Mapping[str, Any], settings: OperatorSettings) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if meta.get("deletionTimestamp") or not ACTIVE.is_set():
        return  # being deleted (the garbage collector removes the children), or no longer the leader
    started = time.monotonic()
    with lock_for(namespace, name):
        # Re-read under the lock: the caller's copy may predate the status another thread just wrote, and a
        # stale status would repeat that thread's Events and transition times.
        fresh = kubeapi.get(KIND, namespace, name)
        if fresh is None or fresh["metadata"].get("uid") != meta.get("uid") or fresh["metadata"].get(
            "deletionTimestamp"
        ):
            return
        if not ACTIVE.is_set():
            return
        try:
            _reconcile(fresh, settings)
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            raise
        else:
            metrics.RECONCILES.labels("ok").inc()
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


def _reconcile(body: Mapping[str, Any], settings: OperatorSettings) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = meta.get("generation")
    spec = body.get("spec") or {}
    old_status = body.get("status") or {}
    try:
        fields, credentials, tls_ca_key = _resolve(namespace, spec)
        children = render(name, namespace, spec, runtime_image=settings.runtime_image, fields=fields,
                          credentials=credentials, tls_ca_key=tls_ca_key)
        if fields is None:
            fields = parse_fields((spec.get("indexTemplate") or {}).get("fields"), "spec.indexTemplate.fields")
    except SpecError as exc:
        metrics.ERRORS.labels(exc.reason).inc()
        _report_invalid(body, exc.reason, exc.message, generation, old_status)
        return

    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": name,
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for child in children:
        child["metadata"]["ownerReferences"] = [owner]
        try:
            kubeapi.apply(child)
        except ApiError as exc:
            if exc.status in (400, 403, 422):
                # The server refuses what we rendered (e.g. bad resources): the user must act, retrying won't help.
                metrics.ERRORS.labels("ApplyRefused").inc()
                message = f"applying {child['kind']} {child['metadata']['name']} was refused: {_api_message(exc)}"
                _report_invalid(body, "ApplyFailed", message, generation, old_status)
                return
            # Anything else is retried, but said in the status too: a server error can persist for one object.
            with contextlib.suppress(Exception):
                message = f"applying {child['kind']} {child['metadata']['name']} failed, retrying: {_api_message(exc)}"
                _report_invalid(body, "ApplyError", message, generation, old_status)
            raise
    kinds = PRUNABLE + (PUBLISHER_KINDS if is_edge(spec) else ())
    _prune(namespace, name, meta["uid"], {(c["kind"], c["metadata"]["name"]) for c in children}, kinds)
    status = observe(name, namespace, spec, settings, old_status, generation, fields_count=count_fields(fields))
    kubeapi.patch_status(KIND, namespace, name, status)
    _announce(body, old_status, status, "Normal")


def count_fields(entries: list[Any] | None) -> int:
    """Named leaf fields, nested groups included: what a person compares with their fields file."""
    total = 0
    for entry in entries or []:
        if isinstance(entry, Mapping):
            nested = entry.get("fields")
            total += count_fields(nested) if isinstance(nested, list) and nested else int("name" in entry)
    return total


def _resolve(namespace: str, spec: Mapping[str, Any]) -> tuple[list[Any] | None, Credentials | None, str]:
    """Look up what the spec references; a missing or malformed reference is a :class:`SpecError`.

    Returns the fields list (when kept in a ConfigMap), the kind of ES credentials, and the key of the
    publisher's TLS Secret that its receivers trust (``ca.crt`` when present, else the certificate).
    """
    fields: list[Any] | None = None
    template = spec.get("indexTemplate") or {}
    ref = template.get("fieldsConfigMapRef")
    if ref:
        key = ref.get("key", "fields.yml")
        config_map = kubeapi.get("ConfigMap", namespace, ref["name"])
        if config_map is None:
            raise SpecError("ConfigMapNotFound",
                            f"ConfigMap {ref['name']} (indexTemplate.fieldsConfigMapRef) does not exist in {namespace}")
        text = (config_map.get("data") or {}).get(key)
        if text is None:
            raise SpecError("ConfigMapKeyNotFound", f"ConfigMap {ref['name']} has no key {key!r}")
        fields = parse_fields(text, f"ConfigMap {ref['name']} key {key}")

    credentials: Credentials | None = None
    es = spec.get("elasticsearch") or {}
    creds_ref = es.get("credentialsSecretRef")
    if creds_ref:
        keys = _secret_keys(namespace, creds_ref["name"], "elasticsearch.credentialsSecretRef")
        if "apiKey" in keys:
            credentials = "apiKey"
        elif {"username", "password"} <= keys:
            credentials = "basic"
        else:
            raise SpecError("InvalidSecret",
                            f"Secret {creds_ref['name']} needs keys username and password, or apiKey "
                            f"(it has: {', '.join(sorted(keys)) or 'none'})")
    tls_ca_key = TLS_CERT_KEY
    for use in secret_uses(spec):
        keys = _secret_keys(namespace, use.name, use.where)
        missing = [key for key in use.keys if key not in keys]
        if missing:
            raise SpecError("InvalidSecret", f"Secret {use.name} has no key {' or '.join(map(repr, missing))}")
        if use.where == "publisher.tls.secretRef" and CA_KEY in keys:
            tls_ca_key = CA_KEY
    return fields, credentials, tls_ca_key


def _secret_keys(namespace: str, name: str, where: str) -> set[str]:
    secret = kubeapi.get("Secret", namespace, name)
    if secret is None:
        raise SpecError("SecretNotFound", f"Secret {name} ({where}) does not exist in namespace {namespace}")
    # Only the key names are used: secret values never leave the API server through the operator.
    return set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())


def _prune(namespace: str, name: str, uid: str, wanted: set[tuple[str, str]], kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        try:
            for item in kubeapi.list_(kind, namespace, naming.instance_selector(name)):
                item_meta = item["metadata"]
                owned = any(ref.get("uid") == uid for ref in item_meta.get("ownerReferences") or [])
                if owned and (kind, item_meta["name"]) not in wanted:
                    log.info("pruning %s %s/%s, no longer rendered", kind, namespace, item_meta["name"])
                    kubeapi.delete(kind, namespace, item_meta["name"], item_meta.get("uid"))
        except ApiError as exc:
            if exc.status != 403:
                raise
            # Without the delete verb a stale child stays; say so, but keep the pipeline running.
            metrics.ERRORS.labels("PruneForbidden").inc()
            log.warning("cannot prune %s in %s: %s", kind, namespace, _api_message(exc))


def observe(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    settings: OperatorSettings,
    old_status: Mapping[str, Any],
    generation: int | None,
    fields_count: int = 0,
) -> dict[str, Any]:
    """The status block from the children as they are now.

    An edge pipeline (spec.forward) has no publisher here: PublisherReady and IndexTemplateReady are True with
    reason External, so Ready follows the receivers alone, and ``status.publisher`` is removed (null in the merge
    patch) rather than reported as 0 ready publishers, which would read as a broken pipeline.
    """
    sts = kubeapi.get("StatefulSet", namespace, naming.receiver(name))
    rx_want = int((spec.get("receiver") or {}).get("replicas", 1))
    rx_ready_n, rx_cond = _workload_condition(sts, rx_want, cond.RECEIVER_READY, "receiver")

    rx_ips = _ready_pod_ips(namespace, naming.selector_labels(name, "receiver"))
    backlog_value, missing = probes.backlog(
        probes.fetch_many(rx_ips, naming.RECEIVER_PORT, settings.backlog_timeout_seconds)
    )
    if missing and rx_ips:
        note = f"; backlog unknown for {missing} of {len(rx_ips)} ready receivers (their /status did not answer)"
        rx_cond = Condition(rx_cond.type, rx_cond.status, rx_cond.reason, rx_cond.message + note)
    if backlog_value is None:
        backlog_value = old_status.get("backlog")  # keep the last known value rather than claim 0

    forward_url = (spec.get("forward") or {}).get("url")
    publisher_status: dict[str, int] | None = None
    if forward_url:
        pub_cond = Condition(cond.PUBLISHER_READY, True, "External",
                             f"batches are forwarded to {forward_url}; that publisher is not managed here")
        tpl_cond = Condition(cond.INDEX_TEMPLATE_READY, True, "External",
                             f"the index template is installed by the publisher at {forward_url}")
    else:
        deployment = kubeapi.get("Deployment", namespace, naming.publisher(name))
        pub_want = int((spec.get("publisher") or {}).get("replicas", 1))
        pub_ready_n, pub_cond = _workload_condition(deployment, pub_want, cond.PUBLISHER_READY, "publisher")
        publisher_status = {"replicas": pub_want, "readyReplicas": pub_ready_n}
        # A publisher serving TLS is not asked over plain http; its readiness vouches for the template instead.
        https = bool(((spec.get("publisher") or {}).get("tls") or {}).get("secretRef"))
        tpl_cond = _template_condition(name, namespace, pub_cond, fields_count, probe=not https)
    parts = [rx_cond, pub_cond, tpl_cond]
    failing = next((c for c in parts if c.status is not True), None)
    if failing is None:
        ready = Condition(cond.READY, True, "PipelineReady", f"receiving at {naming.endpoint(name, namespace)}")
    else:
        ready = Condition(cond.READY, False, failing.reason, failing.message)
    return {
        "observedGeneration": generation,
        "conditions": cond.merge(old_status.get("conditions"), [ready, *parts], generation),
        "endpoint": naming.endpoint(name, namespace),
        "receiver": {"replicas": rx_want, "readyReplicas": rx_ready_n},
        "publisher": publisher_status,
        "backlog": backlog_value,
    }


def _workload_condition(obj: Mapping[str, Any] | None, want: int, type_: str, role: str) -> tuple[int, Condition]:
    if obj is None:
        return 0, Condition(type_, False, "NotFound", f"the {role} workload does not exist yet")
    status = obj.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    if (status.get("observedGeneration") or 0) < (obj["metadata"].get("generation") or 0):
        return ready, Condition(type_, False, "Progressing", f"the {role} controller has not seen the new spec yet")
    if updated < want:
        return ready, Condition(type_, False, "RollingOut", f"{updated}/{want} {role}s updated to the current config")
    if ready < want:
        return ready, Condition(type_, False, "ReplicasNotReady", f"{ready}/{want} {role}s ready")
    return ready, Condition(type_, True, "ReplicasReady", f"{ready}/{want} {role}s ready")


def _ready_pod_ips(namespace: str, selector: Mapping[str, str]) -> list[str]:
    text = ",".join(f"{k}={v}" for k, v in selector.items())
    ips = []
    for pod in kubeapi.list_("Pod", namespace, text):
        status = pod.get("status") or {}
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if is_ready and status.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
            ips.append(status["podIP"])
    return ips


def _template_condition(
    name: str, namespace: str, publisher: Condition, fields_count: int, probe: bool = True
) -> Condition:
    """The publisher installs the template; its /status says whether it did, and its readiness implies it."""
    ips = _ready_pod_ips(namespace, naming.selector_labels(name, "publisher")) if probe else []
    status = next((s for s in probes.fetch_many(ips[:1], naming.PUBLISHER_PORT, 1.0) if s), None)
    template = (status or {}).get("indexTemplate")
    if isinstance(template, Mapping):
        if template.get("installedHash") and template.get("installedHash") == template.get("hash"):
            return Condition(cond.INDEX_TEMPLATE_READY, True, "Installed",
                             f"index template {template.get('name')} installed at {template.get('installedAt')}")
        detail = template.get("error") or template.get("state") or "pending"
        return Condition(cond.INDEX_TEMPLATE_READY, False, "NotInstalled",
                         f"index template {template.get('name')} not installed: {detail}")
    if publisher.status is True:
        # The publisher reports ready only once its template is in place, so ready publishers vouch for it.
        return Condition(cond.INDEX_TEMPLATE_READY, True, "PublisherReady",
                         f"rendered with {fields_count} field entries; the ready publishers have installed it")
    return Condition(cond.INDEX_TEMPLATE_READY, False, "WaitingForPublisher",
                     f"rendered with {fields_count} field entries; waiting for a ready publisher to install it")


def _report_invalid(
    body: Mapping[str, Any], reason: str, message: str, generation: int | None, old: Mapping[str, Any]
) -> None:
    """Ready=False with an actionable reason, plus an Event; no exception, so no retry storm."""
    meta = body["metadata"]
    previous = cond.find(old.get("conditions"), cond.READY) or {}
    # Warn once per distinct problem; every resync repeating it would bury everything else in the log.
    level = logging.DEBUG if (previous.get("reason"), previous.get("message")) == (reason, message) else logging.WARNING
    log.log(level, "IngestPipeline %s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)
    # The other conditions describe children we did not touch; keep them as they were.
    kept = [
        Condition(c["type"], {"True": True, "False": False}.get(c.get("status", "")), c.get("reason", ""),
                  c.get("message", ""))
        for c in old.get("conditions") or []
        if c.get("type") in cond.ORDER and c.get("type") != cond.READY
    ]
    status = {
        "observedGeneration": generation,
        "conditions": cond.merge(old.get("conditions"), [Condition(cond.READY, False, reason, message), *kept],
                                 generation),
    }
    kubeapi.patch_status(KIND, meta["namespace"], meta["name"], status)
    _announce(body, old, status, "Warning")


def _announce(body: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any], type_: str) -> None:
    """An Event when Ready changes status or reason, never on every resync.

    Warning is kept for what a person must fix; rollout progress (pods not ready yet) is Normal.
    """
    before = cond.find(old.get("conditions"), cond.READY) or {}
    after = cond.find(new.get("conditions"), cond.READY) or {}
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return
    events.post(body, type_, str(after.get("reason", "")), str(after.get("message", "")))


def _api_message(exc: ApiError) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.body))[:500]
    except (ValueError, AttributeError):
        return exc.body[:500]
