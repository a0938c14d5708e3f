//! The certificates of a TLS cluster (see [`TlsSpec`]): made and renewed
//! by the operator from a CA of its own, or requested from cert-manager.
//!
//! Either way the replicas mount one Secret, `<name>-tls` (`tls.crt`,
//! `tls.key`, `ca.crt`), and reload it when the kubelet swaps its files;
//! the operator trusts that `ca.crt` when it calls them.
//!
//! Operator-issued, a reconcile:
//! - reads `<name>-ca`, creating it once with a new CA;
//! - rotates that CA when it expires within [`CA_RENEW_BEFORE`] (see
//!   below);
//! - reads `<name>-tls` and issues it again, by server-side apply, when it
//!   is missing, does not verify against the CA for a pod's name, or
//!   expires within [`RENEW_BEFORE`]. A renewed certificate comes from the
//!   same CA, so replicas that still hold the old one keep trusting the
//!   new one and nothing is interrupted.
//!
//! A CA is rotated in three steps, so that no replica ever meets a
//! certificate it does not trust (each replica trusts only the `ca.crt` of
//! its copy of `<name>-tls`, which the kubelet updates about a minute after
//! the Secret changes, and the replicas at different moments):
//! 1. a new CA is made; `<name>-ca` keeps the old one's certificate as
//!    `previous-ca.crt` (its key is dropped: it signs nothing more), and the
//!    `ca.crt` of `<name>-tls` becomes both CAs, new first. The replicas'
//!    certificate, still from the old CA, is kept.
//! 2. [`CA_TRUST_SPREAD`] later, when every replica trusts both, the
//!    certificate is issued again from the new CA.
//! 3. [`CA_OVERLAP`] after the rotation the old CA leaves `ca.crt`: clients
//!    have had that long to fetch the new `ca.crt`. Each replica, as it
//!    reloads the Secret, closes the connections still open with a
//!    certificate of the old CA (peers open theirs again with the new one).
//!
//! `<name>-ca` is only ever replaced with the resource version it was read
//! at, so two writers cannot each make a CA and split the cluster.
//!
//! Each CA the operator makes carries the time it was made in its name, so
//! the two CAs trusted during a rotation have distinct names: revocation
//! lists are matched to their CA by name.
//!
//! With `spec.tls.revocationList`, the replicas also mount that Secret's
//! lists (`--tls-crl`), and each reconcile checks them the way a replica
//! starting with them would, reporting a list that would stop one in a
//! `RevocationListInvalid` event.
//!
//! With `issuerRef`, a reconcile applies a cert-manager `Certificate` that
//! writes `<name>-tls`, and reads the Secret for its CA once it exists.
//! Going back to the operator's own CA, it deletes that `Certificate`
//! before issuing into the Secret, so the two never take turns.
//!
//! [`TlsSpec`]: crate::crd::TlsSpec

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use phxkv::tls::issue::{self, Issued};
use serde_json::json;

use crate::controller::{Context, Error, ensure_owned, ensure_owned_as, publish};
use crate::crd::{IssuerRef, PaxosKV, SecretKey};
use crate::render::{self, CA_CERT_KEY, CA_KEY_KEY, MANAGER, Names, TLS_CERT_KEY, TLS_KEY_KEY};

/// How long the operator's CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// A CA is rotated when less than this remains of it: certificates issued
/// from it meanwhile are capped at its end, so this must exceed
/// [`RENEW_BEFORE`] by far.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(365 * 86_400);
/// After a CA rotation, how long the replicas' certificate stays with the
/// old CA while the new one reaches every replica's trust (the kubelet
/// refreshes a mounted Secret within about a minute, and a replica rereads
/// its files every 30 s).
pub const CA_TRUST_SPREAD: Duration = Duration::from_secs(10 * 60);
/// After a CA rotation, how long the old CA is still trusted: the time
/// clients have to fetch the new `ca.crt`.
pub const CA_OVERLAP: Duration = Duration::from_secs(7 * 86_400);
/// Key of `<name>-ca` with the certificate of the CA being retired.
pub const PREVIOUS_CA_KEY: &str = "previous-ca.crt";
/// Annotation of `<name>-ca`: when its CA replaced the previous one.
pub const CA_ROTATED_AT: &str = "phxkv.io/ca-rotated-at";
/// How long a certificate the operator issues is valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// A certificate is issued again once it expires within this.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// The annotation cert-manager puts on the Secrets it writes.
pub const CERT_MANAGER_ANNOTATION: &str = "cert-manager.io/certificate-name";

/// cert-manager's `Certificate` resource.
pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// The cert-manager `Certificate` for cluster `pkv`, writing `<name>-tls`
/// with the same names, usages and lifetimes as the operator's own.
pub fn certificate(pkv: &PaxosKV, names: &Names, ns: &str, issuer: &IssuerRef) -> DynamicObject {
    let mut obj = DynamicObject::new(&names.tls, &certificate_resource());
    obj.metadata = render::meta(pkv, names.tls.clone());
    obj.data = json!({
        "spec": {
            "secretName": names.tls,
            "issuerRef": {
                "name": issuer.name,
                "kind": issuer.kind.name(),
                "group": issuer.group,
            },
            "commonName": names.certificate_common_name(ns),
            "dnsNames": names.certificate_names(ns),
            "duration": format!("{}h", CERT_VALIDITY.as_secs() / 3600),
            "renewBefore": format!("{}h", RENEW_BEFORE.as_secs() / 3600),
            "usages": ["server auth", "client auth", "digital signature"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "secretTemplate": {"labels": render::labels(&names.cluster)},
        }
    });
    obj
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The operator's CA of one cluster, as `<name>-ca` holds it.
#[derive(Clone, Debug)]
pub struct CaState {
    /// The CA that signs.
    pub current: Issued,
    /// The CA it replaced, still trusted for a while (its certificate).
    pub previous: Option<String>,
    /// When `current` replaced `previous`, in Unix seconds.
    pub rotated_at: Option<i64>,
}

/// What a reconcile does to the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaStep {
    Keep,
    /// Make a new CA; the current one becomes the previous.
    Rotate,
    /// Stop trusting the previous CA.
    DropPrevious,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl CaState {
    /// What replicas and clients trust: the current CA, then the previous.
    pub fn bundle(&self) -> String {
        let mut pem = self.current.cert_pem.clone();
        if let Some(previous) = &self.previous {
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            pem.push_str(previous);
        }
        pem
    }

    /// The step due at `now` (Unix seconds).
    pub fn step(&self, now: i64) -> CaStep {
        match &self.previous {
            None if self.current.not_after.saturating_sub(now) < secs(CA_RENEW_BEFORE) => {
                CaStep::Rotate
            }
            None => CaStep::Keep,
            // Without a time of rotation (edited by hand), as soon as
            // the previous CA has expired.
            Some(previous) => {
                let over = match self.rotated_at {
                    Some(at) => now >= at.saturating_add(secs(CA_OVERLAP)),
                    None => issue::not_after_of(previous).map_or(true, |end| end <= now),
                };
                if over {
                    CaStep::DropPrevious
                } else {
                    CaStep::Keep
                }
            }
        }
    }

    /// Whether the replicas' certificate must come from the current CA at
    /// `now`, or may still be the previous CA's: until [`CA_TRUST_SPREAD`]
    /// after a rotation, some replica may not trust the new CA yet.
    pub fn only_current_signs(&self, now: i64) -> bool {
        match (&self.previous, self.rotated_at) {
            (None, _) | (Some(_), None) => true,
            (Some(_), Some(at)) => now >= at.saturating_add(secs(CA_TRUST_SPREAD)),
        }
    }

    /// This state after `step` at `now`, with `fresh` as the new CA of a
    /// rotation.
    pub fn after(
        &self,
        step: &CaStep,
        now: i64,
        fresh: impl FnOnce() -> Result<Issued, Error>,
    ) -> Result<CaState, Error> {
        Ok(match step {
            CaStep::Keep => self.clone(),
            CaStep::Rotate => CaState {
                current: fresh()?,
                previous: Some(self.current.cert_pem.clone()),
                rotated_at: Some(now),
            },
            CaStep::DropPrevious => CaState {
                current: self.current.clone(),
                previous: None,
                rotated_at: None,
            },
        })
    }

    /// Reads `<name>-ca`.
    fn read(secret: &Secret, names: &Names) -> Result<CaState, Error> {
        let (Some(cert_pem), Some(key_pem)) = (text(secret, CA_CERT_KEY), text(secret, CA_KEY_KEY))
        else {
            return Err(Error::Tls(format!(
                "Secret {} has no `ca.crt` and `ca.key`; restore it, or delete it and \
                 Secret {} to have a new CA made (the replicas lose contact until every \
                 one has the new certificate)",
                names.ca, names.tls
            )));
        };
        let not_after = issue::not_after_of(&cert_pem)
            .map_err(|e| Error::Tls(format!("Secret {}: {e}", names.ca)))?;
        let rotated_at = secret
            .annotations()
            .get(CA_ROTATED_AT)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| t.as_second());
        Ok(CaState {
            current: Issued {
                cert_pem,
                key_pem,
                not_after,
            },
            previous: text(secret, PREVIOUS_CA_KEY),
            rotated_at,
        })
    }
}

fn when(t: i64) -> String {
    Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string())
}

/// The Secret holding the operator's CA for cluster `pkv`.
pub fn ca_secret(pkv: &PaxosKV, names: &Names, ca: &CaState) -> Secret {
    let mut data = BTreeMap::from([
        (CA_CERT_KEY.to_string(), bytes(&ca.current.cert_pem)),
        (CA_KEY_KEY.to_string(), bytes(&ca.current.key_pem)),
    ]);
    if let Some(previous) = &ca.previous {
        data.insert(PREVIOUS_CA_KEY.to_string(), bytes(previous));
    }
    let mut metadata = render::meta(pkv, names.ca.clone());
    if let Some(at) = ca.rotated_at {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(CA_ROTATED_AT.to_string(), when(at));
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The Secret the replicas mount: their certificate, its key, and the CA.
pub fn tls_secret(pkv: &PaxosKV, names: &Names, leaf: &Issued, ca_pem: &str) -> Secret {
    Secret {
        metadata: render::meta(pkv, names.tls.clone()),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (TLS_CERT_KEY.to_string(), bytes(&leaf.cert_pem)),
            (TLS_KEY_KEY.to_string(), bytes(&leaf.key_pem)),
            (CA_CERT_KEY.to_string(), bytes(ca_pem)),
        ])),
        ..Secret::default()
    }
}

/// The text under `key` in `secret`, if it holds any.
pub(crate) fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

/// What a reconcile does to `<name>-tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafStep {
    Keep,
    /// Keep the certificate; write the CA's current bundle as `ca.crt`.
    Retrust,
    /// Issue the certificate again from the current CA, for this reason.
    Issue(String),
}

/// What the certificate in `secret` needs at `now` (Unix seconds): it is
/// kept while it verifies for the first pod's peer name against a CA that
/// may sign it at `now` (see [`CaState::only_current_signs`]), carries
/// the replicas' common name and is more than [`RENEW_BEFORE`] from its
/// end; its `ca.crt` must be the CA's bundle.
pub fn leaf_step(secret: &Secret, ca: &CaState, names: &Names, ns: &str, now: i64) -> LeafStep {
    let (Some(cert), Some(_key)) = (text(secret, TLS_CERT_KEY), text(secret, TLS_KEY_KEY)) else {
        return LeafStep::Issue("the Secret has no certificate and key".into());
    };
    let bundle = ca.bundle();
    let trusted = text(secret, CA_CERT_KEY).as_deref() == Some(bundle.as_str());
    let signers = if ca.only_current_signs(now) {
        &ca.current.cert_pem
    } else {
        &bundle
    };
    let host = format!("{}.{}.{ns}", names.pod(0), names.peers);
    if let Err(e) = issue::verifies_for(signers, &cert, &host) {
        return LeafStep::Issue(
            if ca.previous.is_some() && issue::verifies_for(&bundle, &cert, &host).is_ok() {
                format!(
                    "the CA was rotated at {}",
                    when(ca.rotated_at.unwrap_or(now))
                )
            } else if !trusted {
                format!("its CA is not the one in Secret {}", names.ca)
            } else {
                format!("it does not verify for {host}: {e}")
            },
        );
    }
    if let Err(missing) = carries_common_name(&cert, names, ns) {
        return LeafStep::Issue(missing);
    }
    let end = match issue::not_after_of(&cert) {
        Ok(end) => end,
        Err(e) => return LeafStep::Issue(e.to_string()),
    };
    if end.saturating_sub(now) < secs(RENEW_BEFORE) {
        return LeafStep::Issue(format!("it expires at {}", when(end)));
    }
    if trusted {
        LeafStep::Keep
    } else {
        LeafStep::Retrust
    }
}

/// What the operator calls a TLS cluster's replicas with: the CA to trust,
/// and the replicas' own certificate and key (PEM), presented to a client
/// port that asks for client certificates (`spec.tls.clientCertAuth`).
/// The operator made that key or had cert-manager make it, and may read it
/// already; presenting it gives no one else anything.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub ca: String,
    pub identity: Option<String>,
}

impl ClusterTls {
    /// From the certificate Secret (`ca.crt`, `tls.crt`, `tls.key`): `None`
    /// without a CA in it.
    pub fn from_secret(secret: &Secret) -> Option<ClusterTls> {
        Some(ClusterTls {
            ca: text(secret, CA_CERT_KEY)?,
            identity: secret_identity(secret),
        })
    }

    /// An HTTP client that trusts only the cluster's CA and presents the
    /// replicas' certificate when asked for one. A certificate and key that
    /// cannot be used leave a client without them, with a warning: only a
    /// cluster that asks for client certificates needs them, and the
    /// replicas, which load the same files, say what is wrong too.
    pub fn http_client(&self) -> Result<reqwest::Client, Error> {
        match http_client(&self.ca, self.identity.as_deref()) {
            Err(e) if self.identity.is_some() => {
                tracing::warn!("calling the replicas without a client certificate: {e}");
                http_client(&self.ca, None)
            }
            other => other,
        }
    }
}

fn identity(cert: Option<String>, key: Option<String>) -> Option<String> {
    Some(format!("{}\n{}", cert?.trim_end(), key?.trim_end()))
}

/// Whether `cert` (PEM) carries the replicas' common name, the only one
/// their peer ports admit (`PHXKV_PEER_CERT_ALLOWED_CN`); if not, why.
fn carries_common_name(cert: &str, names: &Names, ns: &str) -> Result<(), String> {
    let want = names.certificate_common_name(ns);
    match issue::common_name_of(cert) {
        Ok(Some(cn)) if cn == want => Ok(()),
        Ok(_) => Err(format!("it does not carry the common name {want}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The certificate and key (`tls.crt`, `tls.key`) of a certificate Secret.
fn secret_identity(secret: &Secret) -> Option<String> {
    identity(text(secret, TLS_CERT_KEY), text(secret, TLS_KEY_KEY))
}

/// What a pass found of `spec.tls.revocationList`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListCheck {
    /// None is asked for.
    NotAsked,
    /// It is usable; these are its lists of the cluster's CAs.
    Usable(Vec<issue::ListVersion>),
    /// A replica starting with it would stop, for this reason.
    Unusable(String),
    /// It is older than the list last given to the replicas, for this
    /// reason: a replica on a new volume (scaled up, or replacing a lost
    /// one) would take it and admit what was revoked since (running ones
    /// refuse it on their reload, and one that restarts keeps the newer
    /// list its volume holds).
    Older(String),
    /// It cannot be checked yet: cert-manager has yet to write the
    /// certificate Secret, whose CA it is checked against.
    Unchecked,
}

/// Makes sure the cluster's certificate Secret exists and is current.
/// Returns what to call the replicas with (`None` while cert-manager has
/// yet to write the Secret) and what became of `spec.tls.revocationList`.
pub async fn ensure(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    names: &Names,
) -> Result<(Option<ClusterTls>, ListCheck), Error> {
    let (tls, retiring) = match &pkv.spec.tls.issuer_ref {
        Some(issuer) => (from_cert_manager(ctx, pkv, ns, names, issuer).await?, None),
        None => {
            let (tls, retiring) = own_ca(ctx, pkv, ns, names).await?;
            (Some(tls), retiring)
        }
    };
    let Some(list) = &pkv.spec.tls.revocation_list else {
        return Ok((tls, ListCheck::NotAsked));
    };
    let Some(tls) = tls else {
        return Ok((None, ListCheck::Unchecked));
    };
    let pem = match read_revocation_list(ctx, ns, list).await? {
        Ok(pem) => pem,
        Err(problem) => return Ok((Some(tls), ListCheck::Unusable(problem))),
    };
    // Only the certificate in the identity is read. Without one the
    // replicas cannot start at all; the lists are checked all the same.
    let own = tls.identity.as_deref().unwrap_or_default();
    let at = format!(
        "Secret {}, key {} (spec.tls.revocationList)",
        list.name, list.key
    );
    let versions = match issue::check_revocation_lists(&tls.ca, &pem, own) {
        Ok(versions) => versions,
        Err(e) => return Ok((Some(tls), ListCheck::Unusable(format!("{at}: {e}")))),
    };
    let given: Vec<issue::ListVersion> = pkv
        .status
        .iter()
        .flat_map(|s| &s.revocation_lists)
        .map(|l| issue::ListVersion {
            issuer: l.issuer.clone(),
            number: l.number.clone(),
            issued: l.issued.0.as_second(),
        })
        .collect();
    if let Some(why) = issue::older_lists(&versions, &given) {
        return Ok((
            Some(tls),
            ListCheck::Older(format!(
                "{at}: {why} (status.revocationLists): a replica on a new volume would take \
                 it and admit what was revoked since; put the newest lists in the Secret"
            )),
        ));
    }
    // During a rotation the lists of the previous CA still count; once it
    // is retired they no longer do, and without one of the new CA beside
    // them a replica that starts stops.
    if let Some((current, retired_at)) = retiring
        && let Err(e) = issue::check_revocation_lists(&current, &pem, own)
    {
        let note = format!(
            "{at}, with the CA of Secret {} alone: {e}. The previous CA is retired at {}; \
             from then a replica that starts with these lists stops: add a list signed with \
             ca.key of Secret {} before then",
            names.ca,
            when(retired_at),
            names.ca
        );
        publish(
            ctx,
            pkv,
            EventType::Warning,
            "RevocationListOutdated",
            "Certificates",
            &note,
        )
        .await;
    }
    Ok((Some(tls), ListCheck::Usable(versions)))
}

/// The PEM text of the revocation lists of `spec.tls.revocationList`, or
/// why a replica cannot have it.
async fn read_revocation_list(
    ctx: &Context,
    ns: &str,
    list: &SecretKey,
) -> Result<Result<String, String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = secrets.get_opt(&list.name).await? else {
        return Ok(Err(format!(
            "Secret {} (spec.tls.revocationList) does not exist",
            list.name
        )));
    };
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&list.key)) else {
        return Ok(Err(format!(
            "Secret {} (spec.tls.revocationList) has no key {}",
            list.name, list.key
        )));
    };
    Ok(String::from_utf8(bytes.0.clone()).map_err(|_| {
        format!(
            "Secret {}, key {} (spec.tls.revocationList) is not text: the replicas read PEM \
             lists (BEGIN X509 CRL); convert a DER list with `openssl crl -inform DER \
             -outform PEM`",
            list.name, list.key
        )
    }))
}

async fn from_cert_manager(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    names: &Names,
    issuer: &IssuerRef,
) -> Result<Option<ClusterTls>, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &certificate_resource());
    if let Some(existing) = api.get_opt(&names.tls).await.map_err(not_installed)? {
        ensure_owned_as(pkv, &existing.metadata, "Certificate", &names.tls)?;
    }
    api.patch(
        &names.tls,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&certificate(pkv, names, ns, issuer)),
    )
    .await
    .map_err(not_installed)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets.get_opt(&names.tls).await?;
    // An issuer that does not keep the common name asked for leaves the
    // replicas with a certificate their peer ports refuse: they stop at
    // start saying so, and the PaxosKV's events say why.
    if let Some(cert) = secret.as_ref().and_then(|s| text(s, TLS_CERT_KEY))
        && carries_common_name(&cert, names, ns).is_err()
    {
        let note = format!(
            "Secret {}: the certificate issued by {} {} does not carry the common name {} \
             that the Certificate asks for, the only name the replicas' peer ports admit; \
             replicas refuse to start with it: use an issuer that keeps the requested common \
             name",
            names.tls,
            issuer.kind.name(),
            issuer.name,
            names.certificate_common_name(ns)
        );
        publish(
            ctx,
            pkv,
            EventType::Warning,
            "CertificateNameMismatch",
            "Certificates",
            &note,
        )
        .await;
    }
    Ok(secret.and_then(|s| ClusterTls::from_secret(&s)))
}

/// A 404 on the `Certificate` resource itself means cert-manager is not
/// installed: say so rather than "not found".
fn not_installed(e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(status) if status.code == 404 => Error::Tls(
            "spec.tls.issuerRef is set but cert-manager's Certificate resource \
             (certificates.cert-manager.io) is not installed; install cert-manager or remove \
             issuerRef to have the operator issue the certificates"
                .into(),
        ),
        _ => Error::Kube(e),
    }
}

async fn own_ca(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    names: &Names,
) -> Result<(ClusterTls, Option<(String, i64)>), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let now = Timestamp::now().as_second();
    let new_ca = || {
        // Each CA of a cluster gets its own name: during a rotation both
        // are trusted, and revocation lists are matched to their CA by
        // name (a name shared by two CAs makes a list unusable).
        issue::new_ca(
            &format!("phxkv CA {}.{ns} {}", names.cluster, when(now)),
            CA_VALIDITY,
        )
        .map_err(|e| Error::Tls(e.to_string()))
    };
    let ca = match secrets.get_opt(&names.ca).await? {
        Some(secret) => {
            ensure_owned(pkv, &secret, &names.ca)?;
            let ca = CaState::read(&secret, names)?;
            let step = ca.step(now);
            if step == CaStep::Keep {
                ca
            } else {
                let next = ca.after(&step, now, new_ca)?;
                let mut replacement = ca_secret(pkv, names, &next);
                // Replaced only as read: a conflict fails this pass,
                // and the next one starts from what is stored.
                replacement.metadata.resource_version = secret.resource_version();
                secrets
                    .replace(&names.ca, &PostParams::default(), &replacement)
                    .await?;
                let (reason, note) = match step {
                    CaStep::Rotate => (
                        "CARotated",
                        format!(
                            "Secret {}: the CA expires at {}, a new one replaces it (valid until \
                             {}); replicas trust both now, their certificate comes from the new \
                             CA after {} minutes, and the old CA is trusted until {}: clients \
                             should fetch the new ca.crt of Secret {} before then",
                            names.ca,
                            when(ca.current.not_after),
                            when(next.current.not_after),
                            CA_TRUST_SPREAD.as_secs() / 60,
                            when(now.saturating_add(secs(CA_OVERLAP))),
                            names.tls
                        ),
                    ),
                    _ => (
                        "PreviousCARetired",
                        format!("Secret {}: the previous CA is no longer trusted", names.ca),
                    ),
                };
                publish(ctx, pkv, EventType::Normal, reason, "Certificates", &note).await;
                next
            }
        }
        None => {
            let ca = CaState {
                current: new_ca()?,
                previous: None,
                rotated_at: None,
            };
            secrets
                .create(&PostParams::default(), &ca_secret(pkv, names, &ca))
                .await?;
            ca
        }
    };
    let bundle = ca.bundle();

    let existing = secrets.get_opt(&names.tls).await?;
    let step = match &existing {
        None => LeafStep::Issue("there is none yet".to_string()),
        Some(secret) => {
            let from_cert_manager = secret.annotations().contains_key(CERT_MANAGER_ANNOTATION);
            if !from_cert_manager {
                ensure_owned(pkv, secret, &names.tls)?;
            }
            let step = leaf_step(secret, &ca, names, ns, now);
            if from_cert_manager {
                // issuerRef was removed: cert-manager must stop writing
                // the Secret before the operator does.
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), ns, &certificate_resource());
                match api.delete(&names.tls, &Default::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                match step {
                    LeafStep::Issue(reason) => LeafStep::Issue(reason),
                    _ => LeafStep::Issue("it was cert-manager's".into()),
                }
            } else {
                step
            }
        }
    };
    let apply = |leaf: &Issued| {
        let secrets = secrets.clone();
        let secret = tls_secret(pkv, names, leaf, &bundle);
        async move {
            secrets
                .patch(
                    &names.tls,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
        }
    };
    let identity = match step {
        LeafStep::Keep => existing.as_ref().and_then(secret_identity),
        LeafStep::Retrust => {
            // Same certificate and key, the CA's bundle as `ca.crt`.
            if let Some(secret) = &existing
                && let (Some(cert_pem), Some(key_pem)) =
                    (text(secret, TLS_CERT_KEY), text(secret, TLS_KEY_KEY))
            {
                let not_after = issue::not_after_of(&cert_pem)
                    .map_err(|e| Error::Tls(format!("Secret {}: {e}", names.tls)))?;
                let leaf = Issued {
                    cert_pem,
                    key_pem,
                    not_after,
                };
                apply(&leaf).await?;
                identity(Some(leaf.cert_pem), Some(leaf.key_pem))
            } else {
                None
            }
        }
        LeafStep::Issue(reason) => {
            let leaf = issue::issue(
                &ca.current,
                &names.certificate_common_name(ns),
                &names.certificate_names(ns),
                CERT_VALIDITY,
            )
            .map_err(|e| Error::Tls(e.to_string()))?;
            apply(&leaf).await?;
            let (event, verb) = if existing.is_none() {
                ("CertificateIssued", "issued")
            } else {
                ("CertificateRenewed", "issued again")
            };
            publish(
                ctx,
                pkv,
                EventType::Normal,
                event,
                "Certificates",
                &format!(
                    "Secret {} {verb} ({reason}): valid until {}, signed by the CA in Secret {}",
                    names.tls,
                    when(leaf.not_after),
                    names.ca
                ),
            )
            .await;
            identity(Some(leaf.cert_pem), Some(leaf.key_pem))
        }
    };
    // A rotation under way: the current CA, and when the previous retires.
    let retiring = match (&ca.previous, ca.rotated_at) {
        (Some(_), Some(at)) => Some((
            ca.current.cert_pem.clone(),
            at.saturating_add(secs(CA_OVERLAP)),
        )),
        _ => None,
    };
    Ok((
        ClusterTls {
            ca: bundle,
            identity,
        },
        retiring,
    ))
}

/// An HTTP client that trusts only the cluster's CA and, given `identity`
/// (a certificate and its key, PEM), presents it to servers that ask.
pub fn http_client(ca_pem: &str, identity: Option<&str>) -> Result<reqwest::Client, Error> {
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::Tls("the cluster's CA (ca.crt) holds no PEM certificate".into()))?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .tls_certs_only(certs);
    if let Some(pem) = identity {
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            Error::Tls(format!(
                "the replicas' certificate and key (tls.crt, tls.key): {e}"
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| Error::Tls(format!("HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{IssuerKind, PaxosKVSpec};
    use crate::render::Transport;

    const DAY: Duration = Duration::from_secs(86_400);

    fn sample() -> PaxosKV {
        let mut pkv = PaxosKV::new("kv", PaxosKVSpec::default());
        pkv.metadata.namespace = Some("db".into());
        pkv.metadata.uid = Some("uid-1".into());
        pkv
    }

    fn names() -> Names {
        Names::with_transport("kv", "db", Transport::Tls)
    }

    fn leaf(ca: &Issued, valid_for: Duration) -> Issued {
        issue::issue(
            ca,
            &names().certificate_common_name("db"),
            &names().certificate_names("db"),
            valid_for,
        )
        .expect("leaf")
    }

    fn state(ca: &Issued) -> CaState {
        CaState {
            current: ca.clone(),
            previous: None,
            rotated_at: None,
        }
    }

    fn issue_reason(step: LeafStep) -> String {
        match step {
            LeafStep::Issue(reason) => reason,
            other => panic!("expected the certificate issued again, got {other:?}"),
        }
    }

    #[test]
    fn the_operator_presents_the_replicas_certificate_from_their_secret() {
        let pkv = sample();
        let names = names();
        let ca = issue::new_ca("ca", CA_VALIDITY).expect("ca");
        let leaf = leaf(&ca, CERT_VALIDITY);
        let secret = tls_secret(&pkv, &names, &leaf, &ca.cert_pem);
        let tls = ClusterTls::from_secret(&secret).expect("a CA");
        assert_eq!(tls.ca, ca.cert_pem);
        let identity = tls.identity.clone().expect("certificate and key");
        assert!(identity.starts_with(leaf.cert_pem.trim_end()), "{identity}");
        assert!(identity.ends_with(leaf.key_pem.trim_end()), "{identity}");
        assert!(tls.http_client().is_ok());

        // A Secret without the key: the CA alone, nothing presented.
        let mut no_key = secret.clone();
        if let Some(data) = no_key.data.as_mut() {
            data.remove(TLS_KEY_KEY);
        }
        let tls = ClusterTls::from_secret(&no_key).expect("a CA");
        assert!(tls.identity.is_none());
        assert!(tls.http_client().is_ok());
        // A key that is not one: a clear error; the cluster's client does
        // without it (and warns), since most clusters never ask for it.
        let err = http_client(&ca.cert_pem, Some("not PEM")).expect_err("no identity");
        assert!(err.to_string().contains("tls.key"), "{err}");
        let broken = ClusterTls {
            ca: ca.cert_pem.clone(),
            identity: Some("not PEM".into()),
        };
        assert!(broken.http_client().is_ok());
    }

    #[test]
    fn a_fresh_certificate_of_the_ca_is_kept_and_anything_else_is_issued_again() {
        let pkv = sample();
        let names = names();
        let ca = issue::new_ca("ca", CA_VALIDITY).expect("ca");
        let st = state(&ca);
        let now = Timestamp::now().as_second();
        let good = tls_secret(&pkv, &names, &leaf(&ca, CERT_VALIDITY), &ca.cert_pem);
        assert_eq!(leaf_step(&good, &st, &names, "db", now), LeafStep::Keep);
        // Within 30 days of the end, by the clock or by a short lifetime.
        let later = now + 61 * 86_400;
        assert!(
            issue_reason(leaf_step(&good, &st, &names, "db", later)).starts_with("it expires at")
        );
        let short = tls_secret(&pkv, &names, &leaf(&ca, 10 * DAY), &ca.cert_pem);
        issue_reason(leaf_step(&short, &st, &names, "db", now));
        // Another CA (a CA replaced by hand) or a Secret emptied.
        let other = issue::new_ca("other", CA_VALIDITY).expect("other");
        let foreign = tls_secret(&pkv, &names, &leaf(&other, CERT_VALIDITY), &other.cert_pem);
        assert!(issue_reason(leaf_step(&foreign, &st, &names, "db", now)).contains("CA"));
        let mixed = tls_secret(&pkv, &names, &leaf(&other, CERT_VALIDITY), &ca.cert_pem);
        assert!(
            issue_reason(leaf_step(&mixed, &st, &names, "db", now)).contains("does not verify")
        );
        issue_reason(leaf_step(&Secret::default(), &st, &names, "db", now));
        // A certificate of the CA under another common name: the peer
        // ports would refuse it.
        let renamed = issue::issue(
            &ca,
            "someone else",
            &names.certificate_names("db"),
            CERT_VALIDITY,
        )
        .expect("leaf");
        let renamed = tls_secret(&pkv, &names, &renamed, &ca.cert_pem);
        assert_eq!(
            issue_reason(leaf_step(&renamed, &st, &names, "db", now)),
            "it does not carry the common name kv.db"
        );
        // A good certificate under a stale `ca.crt` keeps its key.
        let stale = tls_secret(&pkv, &names, &leaf(&ca, CERT_VALIDITY), &other.cert_pem);
        assert_eq!(leaf_step(&stale, &st, &names, "db", now), LeafStep::Retrust);
    }

    #[test]
    fn a_ca_is_rotated_a_year_before_its_end_and_the_old_one_is_retired_a_week_later() {
        let now = Timestamp::now().as_second();
        let young = state(&issue::new_ca("ca", CA_VALIDITY).expect("ca"));
        assert_eq!(young.step(now), CaStep::Keep);
        assert_eq!(
            young.step(young.current.not_after - 366 * 86_400),
            CaStep::Keep
        );
        assert_eq!(
            young.step(young.current.not_after - 364 * 86_400),
            CaStep::Rotate
        );
        let ageing = state(&issue::new_ca("old", 300 * DAY).expect("old"));
        assert_eq!(ageing.step(now), CaStep::Rotate);
        let fresh = issue::new_ca("new", CA_VALIDITY).expect("new");
        let rotated = ageing
            .after(&CaStep::Rotate, now, || Ok(fresh.clone()))
            .expect("rotated");
        assert_eq!(rotated.current.cert_pem, fresh.cert_pem);
        assert_eq!(
            rotated.previous.as_deref(),
            Some(ageing.current.cert_pem.as_str())
        );
        assert_eq!(rotated.rotated_at, Some(now));
        assert!(rotated.bundle().starts_with(&fresh.cert_pem));
        assert!(rotated.bundle().ends_with(&ageing.current.cert_pem));
        assert_eq!(rotated.step(now + 6 * 86_400), CaStep::Keep);
        assert_eq!(rotated.step(now + 7 * 86_400), CaStep::DropPrevious);
        assert!(!rotated.only_current_signs(now + 9 * 60));
        assert!(rotated.only_current_signs(now + 10 * 60));
        let retired = rotated
            .after(&CaStep::DropPrevious, now, || panic!("no new CA"))
            .expect("retired");
        assert_eq!(retired.bundle(), fresh.cert_pem);
        assert_eq!(retired.step(now), CaStep::Keep);
        // Edited by hand without a time: the previous CA goes once expired.
        let undated = CaState {
            rotated_at: None,
            ..rotated.clone()
        };
        assert_eq!(undated.step(now), CaStep::Keep);
        assert_eq!(undated.step(ageing.current.not_after), CaStep::DropPrevious);
    }

    /// Walks a rotation through the replicas' eyes. The kubelet brings a
    /// changed Secret to the replicas one by one, so after each change some
    /// replicas still present the previous certificate and trust the
    /// previous `ca.crt`: every certificate of the two versions must verify
    /// against every trust of the two, and versions must be at least
    /// [`CA_TRUST_SPREAD`] apart for the older one to be gone by the next.
    #[test]
    fn during_a_ca_rotation_every_replica_trusts_every_certificate_it_meets() {
        let pkv = sample();
        let names = names();
        let host = "kv-1.kv-peers.db";
        let t0 = Timestamp::now().as_second();
        let old = issue::new_ca("old", 300 * DAY).expect("old");
        let mut ca = state(&old);
        let mut secret = tls_secret(&pkv, &names, &leaf(&old, CERT_VALIDITY), &old.cert_pem);
        let mut changed_at = None;
        let mut changes = 0;
        // Reconciles at these times: the rotation, a pass within the
        // spread, the switch, a pass between, the retirement, and after.
        for t in [
            t0,
            t0 + 60,
            t0 + 600,
            t0 + 86_400,
            t0 + 7 * 86_400,
            t0 + 8 * 86_400,
        ] {
            let step = ca.step(t);
            ca = ca
                .after(&step, t, || {
                    issue::new_ca("new", CA_VALIDITY).map_err(|e| Error::Tls(e.to_string()))
                })
                .expect("step");
            let before = secret.clone();
            match leaf_step(&secret, &ca, &names, "db", t) {
                LeafStep::Keep => continue,
                LeafStep::Retrust => {
                    let cert = Issued {
                        cert_pem: text(&secret, TLS_CERT_KEY).expect("cert"),
                        key_pem: text(&secret, TLS_KEY_KEY).expect("key"),
                        not_after: 0,
                    };
                    secret = tls_secret(&pkv, &names, &cert, &ca.bundle());
                }
                LeafStep::Issue(reason) => {
                    assert!(reason.contains("rotated"), "{reason}");
                    secret = tls_secret(
                        &pkv,
                        &names,
                        &leaf(&ca.current, CERT_VALIDITY),
                        &ca.bundle(),
                    );
                }
            }
            changes += 1;
            if let Some(last) = changed_at {
                assert!(
                    t - last >= secs(CA_TRUST_SPREAD),
                    "changes at +{} and +{} s",
                    last - t0,
                    t - t0
                );
            }
            changed_at = Some(t);
            for presenter in [&before, &secret] {
                let cert = text(presenter, TLS_CERT_KEY).expect("cert");
                for truster in [&before, &secret] {
                    let trust = text(truster, CA_CERT_KEY).expect("ca");
                    issue::verifies_for(&trust, &cert, host).unwrap_or_else(|e| {
                        panic!(
                            "at +{} s a replica refuses a peer's certificate: {e}",
                            t - t0
                        )
                    });
                }
            }
        }
        assert_eq!(changes, 3, "new trust, new certificate, old CA retired");
        assert_eq!(ca.previous, None);
        assert_eq!(
            text(&secret, CA_CERT_KEY).as_deref(),
            Some(ca.current.cert_pem.as_str())
        );
        issue::verifies_for(
            &ca.current.cert_pem,
            &text(&secret, TLS_CERT_KEY).expect("cert"),
            host,
        )
        .expect("signed by the new CA");
    }

    #[test]
    fn the_certificate_covers_pods_services_and_port_forwarding() {
        let names = names();
        let ca = issue::new_ca("ca", CA_VALIDITY).expect("ca");
        let cert = leaf(&ca, CERT_VALIDITY);
        for host in [
            "kv-0.kv-peers.db",
            "kv-4.kv-peers.db.svc",
            "kv-1.kv-peers.db.svc.cluster.local",
            "kv",
            "kv.db",
            "kv.db.svc",
            "kv.db.svc.cluster.local",
            "localhost",
        ] {
            issue::verifies_for(&ca.cert_pem, &cert.cert_pem, host).expect(host);
        }
        // The peer URLs the replicas record are covered.
        let url = names.peer_url("kv-2");
        assert_eq!(url, "https://kv-2.kv-peers.db:8081");
        assert_eq!(
            names.client_url("db", "kv-2"),
            "https://kv-2.kv-peers.db.svc:8080"
        );
    }

    #[test]
    fn the_cert_manager_certificate_matches_the_operators_own() {
        let pkv = sample();
        let names = names();
        let issuer = IssuerRef {
            name: "corp-ca".into(),
            kind: IssuerKind::ClusterIssuer,
            group: "cert-manager.io".into(),
        };
        let cert = serde_json::to_value(certificate(&pkv, &names, "db", &issuer)).expect("json");
        assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
        assert_eq!(cert["kind"], "Certificate");
        assert_eq!(cert["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let spec = &cert["spec"];
        assert_eq!(spec["secretName"], "kv-tls");
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(spec["issuerRef"]["name"], "corp-ca");
        assert_eq!(spec["dnsNames"], json!(names.certificate_names("db")));
        assert_eq!(spec["duration"], "2160h");
        assert_eq!(spec["renewBefore"], "720h");
        assert!(
            spec["usages"]
                .as_array()
                .expect("usages")
                .contains(&json!("client auth")),
            "peers present it as clients too"
        );
    }
}
