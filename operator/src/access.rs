//! Every Kubernetes API call the operator makes, as RBAC rules: the one
//! place that says what the operator needs, kept next to the code.
//!
//! Two checks hold it to the truth:
//!
//! - `tests/access.rs` drives every path of the operator that talks to the
//!   API server (a reconcile that creates a cluster, one that replaces a
//!   pod, a repeated event, the leader election, the CRD apply, the
//!   controller's watches) against a fake API server, turns each request
//!   into the permission it needs ([`permission_for`]) and requires the set
//!   of them to equal [`permissions`]: a call the table lacks fails, and so
//!   does a rule no code uses.
//! - `e2e/chart/check.sh` renders the chart and requires its Roles and
//!   ClusterRoles to grant exactly `phxkv-operator rbac` (this table as
//!   JSON), in the right places.
//!
//! Server-side apply needs `patch`, and `create` as well when the object
//! does not exist yet (the API server authorizes the create); the operator
//! applies everything it owns, so those resources need both, and `get`
//! (it reads each object first, to refuse taking over one it does not own).

use serde::Serialize;

use crate::install;

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Where `PaxosKV`s are watched: a ClusterRole, or a Role in the one
    /// watched namespace.
    Watched,
    /// The operator's own namespace (the leader Lease): a Role there.
    Own,
    /// Cluster-scoped objects (the CRD): a ClusterRole.
    Cluster,
}

/// Which objects of a resource a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// Any (`resourceNames` omitted).
    Any,
    /// The leader Lease (`--lease-name`).
    Lease,
    /// The operator's CRDs.
    Crd,
}

/// One rule of the table.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Where it applies.
    pub scope: Scope,
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, or `resource/subresource`.
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
    /// Which objects.
    pub names: Names,
    /// Which code makes the calls.
    pub why: &'static str,
    /// Only with `--manage-crd`.
    pub crd_only: bool,
}

const fn rule(
    scope: Scope,
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    why: &'static str,
) -> Rule {
    Rule {
        scope,
        group,
        resource,
        verbs,
        names: Names::Any,
        why,
        crd_only: false,
    }
}

/// The table.
pub const RULES: &[Rule] = &[
    rule(
        Scope::Watched,
        "phxkv.io",
        "paxoskvs",
        &["get", "list", "watch"],
        "the controller's watch; the start-up check that the CRD is served; backup: read the \
         cluster of a PaxosKVBackup",
    ),
    rule(
        Scope::Watched,
        "phxkv.io",
        "paxoskvs/status",
        &["patch"],
        "controller::write_status (server-side apply of status)",
    ),
    rule(
        Scope::Watched,
        "phxkv.io",
        "paxoskvbackups",
        &["list", "watch", "create", "delete"],
        "the backup controller's watch and the owned-backup watch; backup::cluster_pass lists a \
         cluster's backups, creates the scheduled ones and deletes those of pruned bases and old \
         failures (backup::to_forget)",
    ),
    rule(
        Scope::Watched,
        "phxkv.io",
        "paxoskvbackups/status",
        &["patch"],
        "backup::reconcile writes a backup's status (server-side apply)",
    ),
    rule(
        Scope::Watched,
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch"],
        "controller: check the owner and read the size, apply; the owned-object watch",
    ),
    rule(
        Scope::Watched,
        "",
        "services",
        &["get", "list", "watch", "create", "patch"],
        "controller: check the owner, apply the peer, client and metrics Services; the owned-object watch",
    ),
    rule(
        Scope::Watched,
        "",
        "serviceaccounts",
        &["get", "create", "patch"],
        "controller: check the owner, apply the cluster's ServiceAccount",
    ),
    rule(
        Scope::Watched,
        "policy",
        "poddisruptionbudgets",
        &["get", "create", "patch"],
        "controller: check the owner, apply the PodDisruptionBudget",
    ),
    rule(
        Scope::Watched,
        "networking.k8s.io",
        "networkpolicies",
        &["get", "create", "patch", "delete"],
        "controller: check the owner, apply the NetworkPolicy; delete it when turned off",
    ),
    rule(
        Scope::Watched,
        "",
        "configmaps",
        &["get", "create", "patch"],
        "controller: read, check the owner and apply the bootstrap ConfigMap",
    ),
    rule(
        Scope::Watched,
        "",
        "secrets",
        &["get", "create", "patch", "update"],
        "controller: read the token Secret and create it once (never patched); certs: read and \
         create the CA Secret once, replace it as read (update) when rotating the CA and when \
         retiring the previous one, apply the certificate Secret when issuing or renewing it, \
         read the revocation list Secret to check it; backup: read the token and the \
         cluster's CA to ask for a backup",
    ),
    rule(
        Scope::Watched,
        "cert-manager.io",
        "certificates",
        &["get", "create", "patch", "delete"],
        "certs: with spec.tls.issuerRef, check the owner and apply the cluster's Certificate; \
         delete it when issuerRef is removed",
    ),
    rule(
        Scope::Watched,
        "",
        "pods",
        &["list", "delete"],
        "controller: list the cluster's pods; delete one to upgrade or recreate it",
    ),
    rule(
        Scope::Watched,
        "",
        "persistentvolumeclaims",
        &["delete"],
        "controller: self-healing deletes the claim of a member it recreates",
    ),
    rule(
        Scope::Watched,
        "events.k8s.io",
        "events",
        &["create", "patch"],
        "kube's event Recorder: create, then patch a repeated event's series",
    ),
    // `create` cannot be limited to a name (the name is not known to the
    // authorizer before the object exists), so it is a rule of its own.
    rule(
        Scope::Own,
        "coordination.k8s.io",
        "leases",
        &["create"],
        "leader: create the Lease when it is missing",
    ),
    Rule {
        names: Names::Lease,
        ..rule(
            Scope::Own,
            "coordination.k8s.io",
            "leases",
            &["get", "update"],
            "leader: read, take, renew and release the Lease (guarded updates)",
        )
    },
    Rule {
        names: Names::Crd,
        crd_only: true,
        ..rule(
            Scope::Cluster,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            &["get", "patch"],
            "install::apply_crd, apply_backup_crd: read each CRD's version, apply this operator's",
        )
    },
];

/// One permission: a verb on a resource of a group, for one named object
/// or any (`name` empty).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Permission {
    /// Where it applies.
    pub scope: Scope,
    /// API group.
    #[serde(rename = "apiGroup")]
    pub group: String,
    /// Resource or `resource/subresource`.
    pub resource: String,
    /// RBAC verb.
    pub verb: String,
    /// Object name, or empty for any.
    #[serde(rename = "resourceName")]
    pub name: String,
}

/// The operator's configuration, as far as it changes the table.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--lease-name`.
    pub lease_name: String,
    /// `--manage-crd`.
    pub manage_crd: bool,
}

/// Every permission the table grants with these settings, one per verb and
/// name.
pub fn permissions(settings: &Settings) -> Vec<Permission> {
    let mut out: Vec<Permission> = RULES
        .iter()
        .filter(|r| settings.manage_crd || !r.crd_only)
        .flat_map(|r| {
            let names = match names_of(r, settings).as_slice() {
                [] => vec![String::new()],
                some => some.to_vec(),
            };
            names.into_iter().flat_map(move |name| {
                r.verbs.iter().map(move |verb| Permission {
                    scope: r.scope,
                    group: r.group.into(),
                    resource: r.resource.into(),
                    verb: (*verb).into(),
                    name: name.clone(),
                })
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The objects a rule is limited to (none: any).
fn names_of(rule: &Rule, settings: &Settings) -> Vec<String> {
    match rule.names {
        Names::Any => vec![],
        Names::Lease => vec![settings.lease_name.clone()],
        Names::Crd => vec![
            install::CRD_NAME.to_string(),
            install::BACKUP_CRD_NAME.to_string(),
        ],
    }
}

/// Whether the table (with these settings) grants `wanted`: a rule for any
/// name covers every name. Scope is not compared (a request's path does not
/// say which Role would grant it; the chart check places the rules).
pub fn grants(settings: &Settings, wanted: &Permission) -> bool {
    permissions(settings).iter().any(|p| {
        p.group == wanted.group
            && p.resource == wanted.resource
            && p.verb == wanted.verb
            && (p.name.is_empty() || p.name == wanted.name)
    })
}

/// The permission an API request needs, from its method and path (with
/// query): `GET` of one object is `get`, of a collection `list` (or `watch`
/// with `watch=true`), `POST` is `create`, `PUT` `update`, `PATCH` `patch`,
/// `DELETE` `delete`. `None` for paths that are not resources (discovery).
/// The scope is guessed from the path: the core `leases` group is `Own`,
/// cluster-scoped kinds `Cluster`, the rest `Watched`. A server-side apply
/// that creates the object needs `create` too: add it with
/// [`Permission::with_verb`].
pub fn permission_for(method: &str, path_and_query: &str) -> Option<Permission> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, "", ""),
        [resource, name] => (*resource, *name, ""),
        [resource, name, sub] => (*resource, *name, *sub),
        _ => return None,
    };
    if resource.is_empty() {
        return None;
    }
    let watching = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_empty()) {
        ("GET", true) if watching => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => return None,
    };
    let scope = match (group, resource) {
        ("coordination.k8s.io", "leases") => Scope::Own,
        ("apiextensions.k8s.io", _) => Scope::Cluster,
        _ => Scope::Watched,
    };
    Some(Permission {
        scope,
        group: group.into(),
        resource: if sub.is_empty() {
            resource.into()
        } else {
            format!("{resource}/{sub}")
        },
        verb: verb.into(),
        // A create names no object in its path; RBAC sees no name either.
        name: if verb == "create" {
            String::new()
        } else {
            name.into()
        },
    })
}

impl Permission {
    /// The same permission with another verb.
    pub fn with_verb(&self, verb: &str) -> Permission {
        Permission {
            verb: verb.into(),
            name: if verb == "create" {
                String::new()
            } else {
                self.name.clone()
            },
            ..self.clone()
        }
    }
}

/// The table with these settings as JSON rules, grouped like RBAC rules
/// (one per scope, group, resource and name set), for the chart check.
pub fn rules_json(settings: &Settings) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = RULES
        .iter()
        .filter(|r| settings.manage_crd || !r.crd_only)
        .map(|r| {
            let names = names_of(r, settings);
            serde_json::json!({
                "scope": r.scope,
                "apiGroups": [r.group],
                "resources": [r.resource],
                "verbs": r.verbs,
                "resourceNames": names,
                "why": r.why,
            })
        })
        .collect();
    serde_json::Value::Array(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(scope: Scope, group: &str, resource: &str, verb: &str, name: &str) -> Permission {
        Permission {
            scope,
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
            name: name.into(),
        }
    }

    #[test]
    fn requests_map_to_the_verbs_rbac_checks() {
        use Scope::*;
        let cases = [
            (
                "GET",
                "/api/v1/namespaces/db/secrets/kv-token",
                p(Watched, "", "secrets", "get", "kv-token"),
            ),
            (
                "GET",
                "/api/v1/namespaces/db/pods?labelSelector=a%3Db",
                p(Watched, "", "pods", "list", ""),
            ),
            (
                "GET",
                "/apis/apps/v1/statefulsets?watch=true&labelSelector=x",
                p(Watched, "apps", "statefulsets", "watch", ""),
            ),
            (
                "POST",
                "/api/v1/namespaces/db/secrets",
                p(Watched, "", "secrets", "create", ""),
            ),
            (
                "PATCH",
                "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvs/kv/status?fieldManager=x",
                p(Watched, "phxkv.io", "paxoskvs/status", "patch", "kv"),
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/op",
                p(Own, "coordination.k8s.io", "leases", "update", "op"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/db/pods/kv-2",
                p(Watched, "", "pods", "delete", "kv-2"),
            ),
            (
                "GET",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/paxoskvs.phxkv.io",
                p(
                    Cluster,
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    "get",
                    "paxoskvs.phxkv.io",
                ),
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(permission_for(method, path), Some(want), "{method} {path}");
        }
        assert_eq!(permission_for("GET", "/version"), None);
    }

    #[test]
    fn named_rules_grant_only_their_object() {
        let s = Settings {
            lease_name: "op".into(),
            manage_crd: true,
        };
        let lease = |name: &str| p(Scope::Own, "coordination.k8s.io", "leases", "update", name);
        assert!(grants(&s, &lease("op")));
        assert!(!grants(&s, &lease("someone-elses")));
        let crd = |name: &str| {
            p(
                Scope::Cluster,
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "patch",
                name,
            )
        };
        assert!(grants(&s, &crd("paxoskvs.phxkv.io")));
        assert!(!grants(&s, &crd("other.example.com")));
        let off = Settings {
            manage_crd: false,
            ..s
        };
        assert!(!grants(&off, &crd("paxoskvs.phxkv.io")));
    }
}
