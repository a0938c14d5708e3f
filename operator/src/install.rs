//! The operator keeps its own CustomResourceDefinition current.
//!
//! Helm installs what a chart keeps in `crds/` on `helm install` only:
//! `helm upgrade` never touches it, so a new operator would run against the
//! old schema (new spec fields pruned by the API server, new validation
//! missing). So the leader applies the CRD it was built with
//! ([`PaxosKV::crd`], the same document as the chart's
//! `crds/paxoskv.yaml`) each time it starts leading, with server-side apply
//! as field manager `phxkv-operator`. `--manage-crd=false` turns this off
//! for clusters where CRDs are managed by someone else; the chart's RBAC
//! then needs no access to CRDs at all (`operator.manageCRD`).
//!
//! The applied CRD carries the operator's version in the annotation
//! [`VERSION_ANNOTATION`]. A CRD applied by a *newer* operator is left
//! alone (with a warning): during a rolling update or a rollback an older
//! replica may lead for a while, and taking a schema back could prune the
//! fields a newer operator already wrote.
//!
//! The operator never creates the CRD (its RBAC names this one CRD, and
//! `create` cannot be limited to a name): a missing CRD is an error that
//! says how to install it.
//!
//! The `PaxosKVBackup` CRD ([`BACKUP_CRD_NAME`], `crds/paxoskvbackup.yaml`)
//! is kept current the same way ([`apply_backup_crd`]). It came later: a
//! `helm upgrade` from a chart without it does not install it, so the
//! leader runs without backups (with a warning saying how to install it)
//! rather than not at all.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{CustomResourceExt, ResourceExt};

use crate::crd::{PaxosKV, PaxosKVBackup};
use crate::render::MANAGER;

/// The CRD's name (`<plural>.<group>`); a test checks it against the type.
pub const CRD_NAME: &str = "paxoskvs.phxkv.io";

/// The `PaxosKVBackup` CRD's name.
pub const BACKUP_CRD_NAME: &str = "paxoskvbackups.phxkv.io";

/// Annotation on the applied CRD: the version of the operator that applied it.
pub const VERSION_ANNOTATION: &str = "phxkv.io/operator-version";

/// This operator's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What [`apply_crd`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdOutcome {
    /// The CRD now matches this operator's; `previous` is the version
    /// annotation it had (none: installed by Helm or by hand).
    Applied {
        /// The annotation before.
        previous: Option<String>,
    },
    /// A newer operator applied it; it was left as it is.
    LeftNewer {
        /// That operator's version.
        theirs: String,
    },
}

/// Why the CRD could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The CRD does not exist.
    #[error(
        "the CustomResourceDefinition {0} is not installed: install it with the chart (helm install \
         installs crds/), or `phxkv-operator crd | kubectl apply -f -`"
    )]
    Missing(String),
    /// RBAC refuses.
    #[error(
        "not allowed to get and patch the CustomResourceDefinition {name} ({source}): grant get and \
         patch on customresourcedefinitions/{name} (the chart does unless operator.manageCRD is \
         false), or run with --manage-crd=false"
    )]
    Forbidden {
        /// The CRD.
        name: String,
        /// What the API server said.
        source: kube::Error,
    },
    /// Anything else the API server said.
    #[error("applying the CustomResourceDefinition {name}: {source}")]
    Kube {
        /// The CRD.
        name: String,
        /// What the API server said.
        source: kube::Error,
    },
}

/// The CRD as the operator applies it: the generated one, annotated with
/// this operator's version.
pub fn desired_crd() -> CustomResourceDefinition {
    annotated(PaxosKV::crd())
}

/// The `PaxosKVBackup` CRD as the operator applies it.
pub fn desired_backup_crd() -> CustomResourceDefinition {
    annotated(PaxosKVBackup::crd())
}

fn annotated(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.annotations_mut()
        .insert(VERSION_ANNOTATION.into(), VERSION.into());
    crd
}

/// `major.minor.patch` of a version string (pre-release and build parts
/// ignored); `None` when it is not one.
fn numeric(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

/// Whether a CRD annotated with `theirs` was applied by a newer operator
/// than `ours`. An unreadable annotation is not newer.
pub fn is_newer(theirs: &str, ours: &str) -> bool {
    match (numeric(theirs), numeric(ours)) {
        (Some(t), Some(o)) => t > o,
        _ => false,
    }
}

fn classify(name: &str, source: kube::Error) -> CrdError {
    match &source {
        kube::Error::Api(s) if s.is_forbidden() => CrdError::Forbidden {
            name: name.into(),
            source,
        },
        kube::Error::Api(s) if s.is_not_found() => CrdError::Missing(name.into()),
        _ => CrdError::Kube {
            name: name.into(),
            source,
        },
    }
}

/// Reads the installed CRD and, unless a newer operator applied it, applies
/// this operator's with server-side apply (field manager `phxkv-operator`,
/// taking over the fields Helm or `kubectl` set).
pub async fn apply_crd(client: &kube::Client) -> Result<CrdOutcome, CrdError> {
    apply(client, desired_crd()).await
}

/// [`apply_crd`] for the `PaxosKVBackup` CRD.
pub async fn apply_backup_crd(client: &kube::Client) -> Result<CrdOutcome, CrdError> {
    apply(client, desired_backup_crd()).await
}

async fn apply(
    client: &kube::Client,
    desired: CustomResourceDefinition,
) -> Result<CrdOutcome, CrdError> {
    let name = desired.name_any();
    let name = name.as_str();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let installed = api
        .get_opt(name)
        .await
        .map_err(|e| classify(name, e))?
        .ok_or_else(|| CrdError::Missing(name.into()))?;
    let previous = installed.annotations().get(VERSION_ANNOTATION).cloned();
    if let Some(theirs) = &previous
        && is_newer(theirs, VERSION)
    {
        return Ok(CrdOutcome::LeftNewer {
            theirs: theirs.clone(),
        });
    }
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|e| classify(name, e))?;
    Ok(CrdOutcome::Applied { previous })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_not_by_text() {
        assert!(is_newer("0.10.0", "0.9.3"));
        assert!(is_newer("1.0.0", "0.99.99"));
        assert!(!is_newer("0.9.3", "0.10.0"));
        assert!(!is_newer("0.1.0", "0.1.0"));
        assert!(!is_newer("0.1.1-rc.1", "0.1.1"));
        // Unreadable: not newer, so this operator's CRD wins.
        assert!(!is_newer("banana", "0.1.0"));
        assert!(!is_newer("1.2", "0.1.0"));
    }

    #[test]
    fn the_applied_crd_is_the_generated_one_with_the_version() {
        let crd = desired_crd();
        assert_eq!(crd.name_any(), CRD_NAME);
        assert_eq!(PaxosKV::crd_name(), CRD_NAME);
        assert_eq!(
            crd.annotations()
                .get(VERSION_ANNOTATION)
                .map(String::as_str),
            Some(VERSION)
        );
        assert_eq!(crd.spec, PaxosKV::crd().spec);
        let backups = desired_backup_crd();
        assert_eq!(backups.name_any(), BACKUP_CRD_NAME);
        assert_eq!(PaxosKVBackup::crd_name(), BACKUP_CRD_NAME);
    }
}
