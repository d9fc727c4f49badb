"""The rbac stack (templates/stacks/rbac/): least privilege, judged by Kubernetes' RBAC rule matching
(k8s.io/kubernetes pkg/apis/rbac/v1/evaluation_helpers.go RuleAllows: a rule allows a request when its verbs, API
groups and resources each contain the request's or `*`; a subresource is named `resource/subresource`)."""

from __future__ import annotations

import pytest

from tests.unit import test_stack_catalogue as cat

WRITES = ("create", "update", "patch", "delete", "deletecollection")


def objects() -> list[dict]:
    return cat.rendered("rbac").objects


def role(name: str) -> list[dict]:
    (obj,) = [o for o in objects() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name]
    return obj["rules"]


def allows(rules: list[dict], verb: str, group: str, resource: str) -> bool:
    def has(values, wanted):
        return "*" in values or wanted in values

    return any(has(r.get("verbs") or [], verb) and has(r.get("apiGroups") or [], group)
               and has(r.get("resources") or [], resource) for r in rules)


@pytest.mark.parametrize("verb", ["get", "list", "watch", *WRITES])
def test_readonly_never_reads_or_writes_secrets(verb):
    assert not allows(role("cluster-readonly"), verb, "", "secrets")


def test_readonly_reads_the_cluster_and_writes_nothing():
    rules = role("cluster-readonly")
    for group, resource in (("", "pods"), ("", "pods/log"), ("", "nodes"), ("", "namespaces"), ("", "configmaps"),
                            ("apps", "deployments"), ("constraints.gatekeeper.sh", "k8spspprivilegedcontainer"),
                            ("monitoring.coreos.com", "prometheusrules")):
        assert allows(rules, "list", group, resource), (group, resource)
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules)
    # exec, port-forward, attach and token requests are writes in disguise
    for sub in ("pods/exec", "pods/portforward", "pods/attach", "serviceaccounts/token"):
        assert not any(allows(rules, v, "", sub) for v in ("get", "create"))
    assert not any("*" in (r.get("apiGroups") or []) for r in rules)  # no wildcard that would take in core Secrets


def test_namespace_admin_is_bound_per_namespace_only():
    """A ClusterRoleBinding to namespace-admin would make it cluster-wide: only RoleBindings may grant it."""
    bindings = [o for o in objects() if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    to_admin = [b for b in bindings if b["roleRef"]["name"] == "namespace-admin"]
    assert to_admin and all(b["kind"] == "RoleBinding" for b in to_admin)
    assert all(b["metadata"].get("namespace") == cat.rendered("rbac").namespace for b in to_admin)
    assert [s["name"] for b in to_admin for s in b["subjects"]] == ["lab:namespace-admins"]
    (readonly,) = [b for b in bindings if b["roleRef"]["name"] == "cluster-readonly"]
    assert readonly["kind"] == "ClusterRoleBinding" and readonly["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "lab:readonly"}]


def test_namespace_admin_runs_its_namespace_but_not_its_limits():
    rules = role("namespace-admin")
    for group, resource in (("apps", "deployments"), ("", "secrets"), ("", "pods/exec"), ("", "services"),
                            ("batch", "jobs"), ("rbac.authorization.k8s.io", "rolebindings")):
        assert allows(rules, "create", group, resource), (group, resource)
    for resource in ("resourcequotas", "limitranges", "namespaces", "nodes", "persistentvolumes"):
        assert not any(allows(rules, v, "", resource) for v in WRITES), resource
    # no cluster-scoped RBAC, no escalate/bind/impersonate
    for verb, group, resource in (("create", "rbac.authorization.k8s.io", "clusterroles"),
                                  ("escalate", "rbac.authorization.k8s.io", "roles"),
                                  ("bind", "rbac.authorization.k8s.io", "roles"), ("impersonate", "", "users")):
        assert not allows(rules, verb, group, resource)
