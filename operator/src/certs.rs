//! The certificates of a TLS cluster (see [`TlsSpec`]): made and renewed
//! by the operator from a CA of its own, or requested from cert-manager.
//!
//! Either way the replicas mount one Secret, `<name>-tls` (`tls.crt`,
//! `tls.key`, `ca.crt`), and reload it when the kubelet swaps its files;
//! the operator trusts that `ca.crt` when it calls them.
//!
//! Operator-issued, a reconcile:
//! - reads `<name>-ca`, creating it once with a new CA (never overwritten,
//!   like the token: a second CA would split the cluster);
//! - reads `<name>-tls` and issues it again, by server-side apply, when it
//!   is missing, does not verify against the CA for a pod's name, or
//!   expires within [`RENEW_BEFORE`]. A renewed certificate comes from the
//!   same CA, so replicas that still hold the old one keep trusting the
//!   new one and nothing is interrupted.
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
use crate::crd::{IssuerRef, PaxosKV};
use crate::render::{self, CA_CERT_KEY, CA_KEY_KEY, MANAGER, Names, TLS_CERT_KEY, TLS_KEY_KEY};

/// How long the operator's CA is valid. It is not rotated automatically.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
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
            "commonName": format!("{}.{ns}", names.cluster),
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

/// The Secret holding the operator's CA for cluster `pkv`.
pub fn ca_secret(pkv: &PaxosKV, names: &Names, ca: &Issued) -> Secret {
    Secret {
        metadata: render::meta(pkv, names.ca.clone()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (CA_CERT_KEY.to_string(), bytes(&ca.cert_pem)),
            (CA_KEY_KEY.to_string(), bytes(&ca.key_pem)),
        ])),
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

/// Why the certificate in `secret` must be issued again, or `None` while
/// it is good: signed by `ca`, valid for the first pod's peer name, and
/// more than [`RENEW_BEFORE`] from its end at `now` (Unix seconds).
pub fn renewal_reason(
    secret: &Secret,
    ca: &Issued,
    names: &Names,
    ns: &str,
    now: i64,
) -> Option<String> {
    let (Some(cert), Some(_key)) = (text(secret, TLS_CERT_KEY), text(secret, TLS_KEY_KEY)) else {
        return Some("the Secret has no certificate and key".into());
    };
    if text(secret, CA_CERT_KEY).as_deref() != Some(ca.cert_pem.as_str()) {
        return Some(format!("its CA is not the one in Secret {}", names.ca));
    }
    let host = format!("{}.{}.{ns}", names.pod(0), names.peers);
    if let Err(e) = issue::verifies_for(&ca.cert_pem, &cert, &host) {
        return Some(format!("it does not verify for {host}: {e}"));
    }
    let end = match issue::not_after_of(&cert) {
        Ok(end) => end,
        Err(e) => return Some(e.to_string()),
    };
    let renew = i64::try_from(RENEW_BEFORE.as_secs()).unwrap_or(i64::MAX);
    (end.saturating_sub(now) < renew).then(|| {
        format!(
            "it expires at {}",
            Timestamp::from_second(end).map_or_else(|_| end.to_string(), |t| t.to_string())
        )
    })
}

/// Makes sure the cluster's certificate Secret exists and is current.
/// Returns the CA to trust when calling the replicas: `None` while
/// cert-manager has yet to write the Secret.
pub async fn ensure(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    names: &Names,
) -> Result<Option<String>, Error> {
    match &pkv.spec.tls.issuer_ref {
        Some(issuer) => from_cert_manager(ctx, pkv, ns, names, issuer).await,
        None => own_ca(ctx, pkv, ns, names).await.map(Some),
    }
}

async fn from_cert_manager(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    names: &Names,
    issuer: &IssuerRef,
) -> Result<Option<String>, Error> {
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
    Ok(secrets
        .get_opt(&names.tls)
        .await?
        .and_then(|s| text(&s, CA_CERT_KEY)))
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

async fn own_ca(ctx: &Context, pkv: &PaxosKV, ns: &str, names: &Names) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let ca = match secrets.get_opt(&names.ca).await? {
        Some(secret) => {
            ensure_owned(pkv, &secret, &names.ca)?;
            let (Some(cert_pem), Some(key_pem)) =
                (text(&secret, CA_CERT_KEY), text(&secret, CA_KEY_KEY))
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
            Issued {
                cert_pem,
                key_pem,
                not_after,
            }
        }
        None => {
            let ca = issue::new_ca(&format!("phxkv CA {}.{ns}", names.cluster), CA_VALIDITY)
                .map_err(|e| Error::Tls(e.to_string()))?;
            secrets
                .create(&PostParams::default(), &ca_secret(pkv, names, &ca))
                .await?;
            ca
        }
    };

    let existing = secrets.get_opt(&names.tls).await?;
    let reason = match &existing {
        None => Some("there is none yet".to_string()),
        Some(secret) => {
            let from_cert_manager = secret.annotations().contains_key(CERT_MANAGER_ANNOTATION);
            if !from_cert_manager {
                ensure_owned(pkv, secret, &names.tls)?;
            }
            let now = Timestamp::now().as_second();
            let reason = renewal_reason(secret, &ca, names, ns, now);
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
                Some(reason.unwrap_or_else(|| "it was cert-manager's".into()))
            } else {
                reason
            }
        }
    };
    if let Some(reason) = reason {
        let leaf = issue::issue(
            &ca,
            &format!("{}.{ns}", names.cluster),
            &names.certificate_names(ns),
            CERT_VALIDITY,
        )
        .map_err(|e| Error::Tls(e.to_string()))?;
        secrets
            .patch(
                &names.tls,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&tls_secret(pkv, names, &leaf, &ca.cert_pem)),
            )
            .await?;
        let until = Timestamp::from_second(leaf.not_after)
            .map_or_else(|_| leaf.not_after.to_string(), |t| t.to_string());
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
                "Secret {} {verb} ({reason}): valid until {until}, signed by the CA in Secret {}",
                names.tls, names.ca
            ),
        )
        .await;
    }
    Ok(ca.cert_pem)
}

/// An HTTP client that trusts only the cluster's CA.
pub fn http_client(ca_pem: &str) -> Result<reqwest::Client, Error> {
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::Tls("the cluster's CA (ca.crt) holds no PEM certificate".into()))?;
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .tls_certs_only(certs)
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
        issue::issue(ca, "kv.db", &names().certificate_names("db"), valid_for).expect("leaf")
    }

    #[test]
    fn a_fresh_certificate_of_the_ca_is_kept_and_anything_else_is_issued_again() {
        let pkv = sample();
        let names = names();
        let ca = issue::new_ca("ca", CA_VALIDITY).expect("ca");
        let now = Timestamp::now().as_second();
        let good = tls_secret(&pkv, &names, &leaf(&ca, CERT_VALIDITY), &ca.cert_pem);
        assert_eq!(renewal_reason(&good, &ca, &names, "db", now), None);
        // Within 30 days of the end, by the clock or by a short lifetime.
        let later = now + 61 * 86_400;
        assert!(
            renewal_reason(&good, &ca, &names, "db", later)
                .expect("renew")
                .starts_with("it expires at")
        );
        let short = tls_secret(&pkv, &names, &leaf(&ca, 10 * DAY), &ca.cert_pem);
        assert!(renewal_reason(&short, &ca, &names, "db", now).is_some());
        // Another CA (a CA replaced by hand) or a Secret emptied.
        let other = issue::new_ca("other", CA_VALIDITY).expect("other");
        let foreign = tls_secret(&pkv, &names, &leaf(&other, CERT_VALIDITY), &other.cert_pem);
        assert!(
            renewal_reason(&foreign, &ca, &names, "db", now)
                .expect("renew")
                .contains("CA")
        );
        let mixed = tls_secret(&pkv, &names, &leaf(&other, CERT_VALIDITY), &ca.cert_pem);
        assert!(
            renewal_reason(&mixed, &ca, &names, "db", now)
                .expect("renew")
                .contains("does not verify")
        );
        let empty = Secret::default();
        assert!(renewal_reason(&empty, &ca, &names, "db", now).is_some());
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
