//! Certificates made in memory: a private CA, and certificates it signs for
//! both ends of a connection (server and client authentication, so one
//! certificate serves the client port and mutual TLS on the peer port).
//!
//! The operator keeps a cluster's CA and certificate in Secrets and renews
//! the certificate with [`issue`] from the CA it stored; `phxkv dev
//! --secure` writes its own to files. Nothing here touches a disk or the
//! network, so both callers test it as plain values.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::TlsError;

/// How far back a new certificate's validity starts, for clocks that run a
/// little behind the issuer's.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// When it expires, in Unix seconds.
    pub not_after: i64,
}

fn failed(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("cannot make certificates: {e}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Sets `params` valid from a little before now for `valid_for`; returns
/// the end, in Unix seconds.
fn validity(params: &mut CertificateParams, valid_for: Duration) -> Result<i64, TlsError> {
    let now = unix_now();
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let start = now.saturating_sub(secs(BACKDATE));
    let end = now.saturating_add(secs(valid_for));
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| TlsError::Config(format!("a validity out of range: {e}")))
    };
    params.not_before = at(start)?;
    params.not_after = at(end)?;
    Ok(end)
}

/// A new self-signed CA named `common_name`, valid for `valid_for`, that
/// may sign certificates but no other CA.
pub fn new_ca(common_name: &str, valid_for: Duration) -> Result<Issued, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let not_after = validity(&mut params, valid_for)?;
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// A new key and a certificate for `names` (DNS names, `*.` wildcards or
/// IP addresses) signed by the CA `ca`, valid for `valid_for` (or until
/// the CA expires, if that is sooner: a certificate cannot outlive its
/// issuer's trust).
pub fn issue(
    ca: &Issued,
    common_name: &str,
    names: &[String],
    valid_for: Duration,
) -> Result<Issued, TlsError> {
    if names.is_empty() {
        return Err(TlsError::Config(
            "a certificate needs at least one name".into(),
        ));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem)
        .map_err(|e| TlsError::Config(format!("the CA's private key is unusable: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| TlsError::Config(format!("the CA certificate is unusable: {e}")))?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(failed)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // ECDSA keys sign; they encipher nothing.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut not_after = validity(&mut params, valid_for)?;
    let ca_end = not_after_of(&ca.cert_pem)?;
    if ca_end < not_after {
        not_after = ca_end;
        params.not_after = time::OffsetDateTime::from_unix_timestamp(ca_end)
            .map_err(|e| TlsError::Config(format!("a validity out of range: {e}")))?;
    }
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.signed_by(&key, &issuer).map_err(failed)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// A certificate revocation list (PEM) signed by the CA `ca`, numbered
/// `number` (each new list of a CA takes a higher one), that revokes the
/// certificates `revoked` (PEM, each issued by `ca`) as of now, for
/// `--tls-crl`. It says the next list comes within `valid_for`; phxkv
/// keeps using a list past that time.
pub fn revocation_list(
    ca: &Issued,
    revoked: &[&str],
    number: u64,
    valid_for: Duration,
) -> Result<String, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)
        .map_err(|e| TlsError::Config(format!("the CA's private key is unusable: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| TlsError::Config(format!("the CA certificate is unusable: {e}")))?;
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| TlsError::Config(format!("a time out of range: {e}")))
    };
    let now = unix_now();
    let secs = i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX);
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for pem in revoked {
        let der = first_der(pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::Config(format!("not an X.509 certificate: {e}")))?;
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
            revocation_time: at(now)?,
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update: at(now.saturating_sub(60))?,
        next_update: at(now.saturating_add(secs.max(1)))?,
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params
        .signed_by(&issuer)
        .and_then(|crl| crl.pem())
        .map_err(failed)
}

/// A CA's revocation list as the operator records it (in a `PaxosKV`'s
/// status): whose it is and how new it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListVersion {
    /// The CA's subject as text (RFC 4514), as in `CN=phxkv CA kv.db`.
    pub issuer: String,
    /// The list's CRL number in decimal, when it has one.
    pub number: Option<String>,
    /// When the list was issued (its thisUpdate), in Unix seconds.
    pub issued: i64,
}

/// What a replica would say at start about the revocation lists `crl_pem`
/// (`--tls-crl`) beside the CA file `ca_pem` (`--tls-ca`) and its own
/// certificate `cert_pem` (PEM each): the lists of the CAs of `ca_pem`
/// (lists of other issuers apply only to intermediate CAs, and at least one
/// CA must have one), or why it would refuse them and stop. The operator
/// checks a list with this.
pub fn check_revocation_lists(
    ca_pem: &str,
    crl_pem: &str,
    cert_pem: &str,
) -> Result<Vec<ListVersion>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("ca.crt: not PEM certificates: {e}")))?;
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Config(format!("not PEM revocation lists: {e}")))?;
    let (enforced, _) = super::match_crls(&crls, &cas, "ca.crt", None).map_err(TlsError::Config)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| TlsError::Config(format!("ca.crt: not a usable CA certificate: {e}")))?;
    }
    let verifier = super::client_verifier(roots.into(), crls, &super::provider())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("tls.crt: {e}")))?;
    super::own_revocation(&chain, verifier.as_ref()).map_err(TlsError::Config)?;
    Ok(enforced.iter().map(ListVersion::from).collect())
}

/// Why the lists `new` hold one older than the list of the same CA in
/// `given`, if they do: a lower CRL number, or without numbers an earlier
/// issue time (the rule a replica applies on a reload). Lists of CAs that
/// only one side has are not compared.
pub fn older_lists(new: &[ListVersion], given: &[ListVersion]) -> Option<String> {
    given.iter().find_map(|g| {
        let n = new.iter().find(|n| n.issuer == g.issuer)?;
        let why = super::InForce::of_version(n).older_than(&super::InForce::of_version(g))?;
        Some(format!("its list of {:?} {why}", g.issuer))
    })
}

/// When the first certificate in `pem` expires, in Unix seconds.
pub fn not_after_of(pem: &str) -> Result<i64, TlsError> {
    let der = first_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TlsError::Config(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The subject common name of the first certificate in `pem`, as
/// [`super::client_name`] reads it (none unless exactly one, in text).
pub fn common_name_of(pem: &str) -> Result<Option<String>, TlsError> {
    Ok(super::client_name(&first_der(pem)?))
}

fn first_der(pem: &str) -> Result<rustls::pki_types::CertificateDer<'static>, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Config("no certificate in PEM form".into()))?
        .map_err(|e| TlsError::Config(format!("no certificate in PEM form: {e}")))
}

/// Whether `cert` was signed by `ca` and is valid now for the host name
/// `host` as a server certificate: what a peer or a client checks.
pub fn verifies_for(ca_pem: &str, cert_pem: &str, host: &str) -> Result<(), TlsError> {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let der = der.map_err(|e| TlsError::Config(format!("CA: {e}")))?;
        roots
            .add(der)
            .map_err(|e| TlsError::Config(format!("CA: {e}")))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), super::provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("certificate: {e}")))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| TlsError::Config("no certificate in PEM form".into()))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("{host:?}: {e}")))?;
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| TlsError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_wildcard_under_the_peer_service_and_namespace_verifies_each_pod() {
        let ca = new_ca("phxkv CA kv.db", 3650 * DAY).expect("ca");
        let leaf = issue(
            &ca,
            "kv.db",
            &names(&[
                "*.kv-peers.db",
                "*.kv-peers.db.svc",
                "kv.db.svc",
                "localhost",
            ]),
            90 * DAY,
        )
        .expect("leaf");
        for host in ["kv-0.kv-peers.db", "kv-12.kv-peers.db.svc", "kv.db.svc"] {
            verifies_for(&ca.cert_pem, &leaf.cert_pem, host).expect(host);
        }
        for host in ["kv-0.other-peers.db", "kv-0.kv-peers.prod", "kv.db"] {
            assert!(
                verifies_for(&ca.cert_pem, &leaf.cert_pem, host).is_err(),
                "{host} is not a name of the certificate"
            );
        }
    }

    #[test]
    fn a_renewed_certificate_is_trusted_through_the_same_ca_and_another_ca_is_not() {
        let ca = new_ca("phxkv CA kv.db", 3650 * DAY).expect("ca");
        let first = issue(&ca, "kv.db", &names(&["localhost"]), 90 * DAY).expect("first");
        let renewed = issue(&ca, "kv.db", &names(&["localhost"]), 90 * DAY).expect("renewed");
        assert_ne!(first.key_pem, renewed.key_pem, "a new key each time");
        verifies_for(&ca.cert_pem, &renewed.cert_pem, "localhost").expect("same CA");
        let other = new_ca("phxkv CA other", 3650 * DAY).expect("other");
        assert!(verifies_for(&other.cert_pem, &renewed.cert_pem, "localhost").is_err());
    }

    #[test]
    fn validity_is_what_was_asked_and_never_past_the_ca() {
        let now = unix_now();
        let ca = new_ca("ca", 30 * DAY).expect("ca");
        assert_eq!(not_after_of(&ca.cert_pem).expect("parsed"), ca.not_after);
        let leaf = issue(&ca, "x", &names(&["localhost"]), 10 * DAY).expect("leaf");
        let expected = now + 10 * 86_400;
        assert!((leaf.not_after - expected).abs() <= 5, "{}", leaf.not_after);
        assert_eq!(
            not_after_of(&leaf.cert_pem).expect("parsed"),
            leaf.not_after
        );
        let capped = issue(&ca, "x", &names(&["localhost"]), 90 * DAY).expect("capped");
        assert_eq!(capped.not_after, ca.not_after);
    }

    #[test]
    fn unusable_inputs_are_errors_not_panics() {
        let ca = new_ca("ca", DAY).expect("ca");
        assert!(issue(&ca, "x", &[], DAY).is_err());
        let broken = Issued {
            key_pem: "not a key".into(),
            ..ca.clone()
        };
        assert!(issue(&broken, "x", &names(&["localhost"]), DAY).is_err());
        assert!(not_after_of("garbage").is_err());
    }

    #[test]
    fn a_list_older_than_the_one_given_is_named_and_other_cas_are_not_compared() {
        let version = |issuer: &str, number: Option<&str>, issued| ListVersion {
            issuer: issuer.into(),
            number: number.map(Into::into),
            issued,
        };
        let given = [version("CN=a", Some("5"), 100), version("CN=b", None, 100)];
        let why = older_lists(&[version("CN=a", Some("4"), 200)], &given).expect("older");
        assert!(
            why.contains("\"CN=a\"") && why.contains("number 4"),
            "{why}"
        );
        let why = older_lists(&[version("CN=b", None, 50)], &given).expect("older");
        assert!(why.contains("\"CN=b\"") && why.contains("before"), "{why}");
        assert_eq!(
            older_lists(&[version("CN=a", Some("5"), 100)], &given),
            None
        );
        assert_eq!(older_lists(&[version("CN=a", Some("6"), 1)], &given), None);
        assert_eq!(older_lists(&[version("CN=c", Some("1"), 1)], &given), None);
    }

    #[test]
    fn a_revocation_list_is_checked_as_a_replica_would_check_it_at_start() {
        let ca = new_ca("phxkv CA kv.db", 3650 * DAY).expect("ca");
        let other = new_ca("corp CA", 3650 * DAY).expect("other");
        let own = issue(&ca, "kv.db", &names(&["localhost"]), 90 * DAY).expect("own");
        let client = issue(&ca, "app", &names(&["localhost"]), 90 * DAY).expect("client");
        let list = revocation_list(&ca, &[&client.cert_pem], 1, 7 * DAY).expect("list");
        let versions = check_revocation_lists(&ca.cert_pem, &list, &own.cert_pem).expect("usable");
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].issuer, "CN=phxkv CA kv.db");
        assert_eq!(versions[0].number.as_deref(), Some("1"));
        // Issued a minute back (see `revocation_list`).
        assert!((versions[0].issued - (unix_now() - 60)).abs() <= 5);
        // Another CA's list would never apply.
        let foreign = revocation_list(&other, &[], 1, 7 * DAY).expect("foreign");
        let e = check_revocation_lists(&ca.cert_pem, &foreign, &own.cert_pem)
            .expect_err("another CA's list")
            .to_string();
        assert!(
            e.contains("corp CA") && e.contains("no revocation list of the CAs"),
            "{e}"
        );
        // Beside one of this CA, it is left out (a retired CA's list, say).
        let both_lists = format!("{list}{foreign}");
        assert_eq!(
            check_revocation_lists(&ca.cert_pem, &both_lists, &own.cert_pem)
                .expect("usable")
                .len(),
            1
        );
        // One that revokes the replicas' own certificate.
        let own_revoked = revocation_list(&ca, &[&own.cert_pem], 2, 7 * DAY).expect("list");
        let e = check_revocation_lists(&ca.cert_pem, &own_revoked, &own.cert_pem)
            .expect_err("own certificate revoked")
            .to_string();
        assert!(e.contains("own certificate"), "{e}");
        // A CA of the same name but another key: the signature fails.
        let impostor = new_ca("phxkv CA kv.db", 3650 * DAY).expect("impostor");
        let forged = revocation_list(&impostor, &[], 3, 7 * DAY).expect("forged");
        let e = check_revocation_lists(&ca.cert_pem, &forged, &own.cert_pem)
            .expect_err("bad signature")
            .to_string();
        assert!(e.contains("does not verify"), "{e}");
        // Two CAs of one name in the bundle.
        let both = format!("{}{}", ca.cert_pem, impostor.cert_pem);
        let e = check_revocation_lists(&both, &list, &own.cert_pem)
            .expect_err("shared name")
            .to_string();
        assert!(e.contains("more than one CA"), "{e}");
        // Two lists of one CA: only the first would be used.
        let newer = revocation_list(&ca, &[], 4, 7 * DAY).expect("list");
        let e = check_revocation_lists(&ca.cert_pem, &format!("{list}{newer}"), &own.cert_pem)
            .expect_err("two lists of one CA")
            .to_string();
        assert!(e.contains("two revocation lists"), "{e}");
        // Not a list at all.
        let e = check_revocation_lists(&ca.cert_pem, &ca.cert_pem, &own.cert_pem)
            .expect_err("a certificate, not a list")
            .to_string();
        assert!(e.contains("no PEM certificate revocation list"), "{e}");
    }
}
