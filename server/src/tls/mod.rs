//! TLS for the client port, the peer port, and the calls peers make to each
//! other.
//!
//! Certificates come from PEM files (`--tls-cert`, `--tls-key`, `--tls-ca`
//! and their `--peer-tls-*` counterparts). In Kubernetes those files are a
//! mounted Secret that cert-manager or the operator replaces before the
//! certificate expires, so they are never read once and kept: a
//! [`Material`] remembers what it loaded together with a stamp of the files
//! (device, inode, length, modification time, symlinks followed, which is
//! how a Secret volume swaps its contents), and every TLS handshake, in
//! either direction, first checks the stamp and reloads when it changed. A
//! new certificate is therefore served by the next connection, with no
//! restart and no dropped request (connections already open keep the
//! certificate they started with). Files touched, or written again with
//! the same bytes, are read and change nothing. A reload that fails (a half-written
//! file, a key that does not match the certificate) keeps the previous
//! material and logs why, and the next handshake tries again.
//!
//! A connection whose client presented a certificate is admitted by the
//! CA of its handshake, and may last for hours. So after every reload the
//! certificates of open connections are checked again ([`Material::admits`],
//! called by `crate::net::serve` when [`Material::reloads`] says so): one
//! that the new CA (or the clock) no longer admits is closed. Replacing a
//! leaked client CA, or a peer CA, then shuts out its certificates'
//! connections too, not only their next handshakes.
//!
//! Everything else in rustls is used as it comes: [`ServerConfig`] and
//! [`ClientConfig`] are built once, with resolvers and verifiers here that
//! consult the current material on each handshake.
//!
//! - The client port serves the certificate and, with `--client-cert-auth`,
//!   refuses clients without a certificate signed by the CA.
//! - The peer port always requires one (mutual TLS): a peer that presents
//!   no certificate, or one signed by another CA, is refused during the
//!   handshake, before any handler runs. With `--peer-cert-allowed-cn` the
//!   certificate's common name must also be the one given, so that client
//!   certificates of the same CA, which name their holders, are refused
//!   there too.
//! - Outgoing peer calls present this node's certificate and check the
//!   other side's against the CA and against the host name of its peer URL.
//! - With revocation lists (`--tls-crl`, `--peer-tls-crl`), a certificate
//!   they list is refused in every one of these checks. The lists are read
//!   and reloaded with the other files, and kept in the data directory so
//!   that a restart does not fall back to an older one ([`kept`]).
//!
//! [`listener`] accepts TLS connections for axum and answers a plain-HTTP
//! request on a TLS port with a clear error instead of a stalled handshake.

pub mod dev_ca;
pub mod issue;
pub mod kept;
pub mod listener;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// The name a verified client certificate gives its holder: the common
/// name (CN) of its subject, when it has exactly one and it is text. With
/// `--client-cert-identity` that name is the id of the API token a request
/// without a bearer token acts as (see `crate::auth::gate`); a certificate
/// without one, or with several, names nobody.
pub fn client_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let name = names.next()?.as_str().ok()?;
    if names.next().is_some() {
        return None;
    }
    Some(name.to_owned())
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File {
        path: String,
        reason: String,
        /// Which of a [`TlsPaths`]' files it is, when known: what the
        /// error names to the user is that file's flag.
        role: Option<FileRole>,
    },
    #[error("{0}")]
    Config(String),
}

/// The files of a [`TlsPaths`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    Cert,
    Key,
    Ca,
    Crl,
}

impl TlsError {
    fn file(path: &Path, reason: impl std::fmt::Display) -> Self {
        TlsError::File {
            path: path.display().to_string(),
            reason: reason.to_string(),
            role: None,
        }
    }

    fn about(path: &Path, role: FileRole, reason: impl std::fmt::Display) -> Self {
        TlsError::File {
            path: path.display().to_string(),
            reason: reason.to_string(),
            role: Some(role),
        }
    }

    /// This error, said to be about the file of `role` unless it already
    /// names one.
    fn of(self, role: FileRole) -> Self {
        match self {
            TlsError::File {
                path,
                reason,
                role: None,
            } => TlsError::File {
                path,
                reason,
                role: Some(role),
            },
            other => other,
        }
    }
}

/// The cryptography every TLS connection of this process uses.
///
/// Named explicitly: more than one provider is compiled in (the object
/// store client brings its own), and rustls refuses to guess between them.
///
/// The suites are aws-lc-rs's defaults with AES-128-GCM moved ahead of
/// AES-256-GCM within TLS 1.3 and within TLS 1.2; the TLS 1.3 suites stay
/// ahead of the TLS 1.2 ones, and the rest keep their order.
/// Both are approved for TLS 1.3 (AES-128-GCM is the one every
/// implementation must offer) and both use the processor's AES
/// instructions, but AES-128 runs ten rounds per block instead of fourteen,
/// and this server's records are small and many: a request and its answer
/// each cost one record to encrypt and one to decrypt on both sides. Go's
/// TLS, which etcd uses, makes the same choice on hardware with AES. The
/// server follows the client's order, as rustls does by default, so a
/// client that prefers another suite (ChaCha20 on a processor without AES
/// instructions) still gets it; phxkv's own peers and clients use this
/// order.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // A stable sort: equal keys keep the defaults' order.
    provider.cipher_suites.sort_by_key(|suite| {
        (
            matches!(suite, rustls::SupportedCipherSuite::Tls12(_)),
            !is_aes_128_gcm(suite.suite()),
        )
    });
    Arc::new(provider)
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// The URL scheme of a port with or without TLS.
pub fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// The TLS error inside a failed call (a certificate the other side did
/// not accept, or one that we did not), if TLS is why it failed.
pub fn failure_reason(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // io::Error's `source` skips the error it wraps (often another
        // io::Error around rustls' error): look inside it instead.
        current = match err.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            },
            None => err.source(),
        };
    }
    None
}

/// Where one certificate, its key and the CA that signs its peers are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign the certificates accepted from the
    /// other side; none means the other side is not asked for one.
    pub ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of those CAs: a certificate they
    /// list is refused, in either direction.
    pub crl: Option<PathBuf>,
}

impl TlsPaths {
    fn files(&self) -> impl Iterator<Item = &Path> {
        [
            Some(self.cert.as_path()),
            Some(self.key.as_path()),
            self.ca.as_deref(),
            self.crl.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// How many more times the files are read at start while they change.
const START_READS: usize = 5;

/// What identifies a version of the files: changes when any is replaced.
type Stamp = Vec<(u64, u64, u64, Option<SystemTime>)>;

fn stamp(paths: &TlsPaths) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    paths
        .files()
        .map(|p| {
            let m = std::fs::metadata(p)?;
            Ok((m.dev(), m.ino(), m.len(), m.modified().ok()))
        })
        .collect()
}

/// The bytes of the files of one [`TlsPaths`].
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    crl: Option<Vec<u8>>,
}

impl Contents {
    /// What differs from `new`, in the words of the flags that name the
    /// files, for the log line of a reload.
    fn changed_parts(&self, new: &Contents) -> Vec<&'static str> {
        let mut parts = Vec::new();
        if self.cert != new.cert {
            parts.push("certificate");
        }
        if self.key != new.key {
            parts.push("key");
        }
        if self.ca != new.ca {
            parts.push("CA");
        }
        if self.crl != new.crl {
            parts.push("revocation list");
        }
        parts
    }
}

fn read_file(path: &Path, role: FileRole) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::about(path, role, e))
}

/// One loaded version of the files.
#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    /// The files' bytes as read: a reload whose files hold the same bytes
    /// (a touch, a Secret volume refreshed with what it had) changes
    /// nothing, so it renews nothing (see [`Material::reloads`]).
    contents: Contents,
    /// The revocation lists in force, as PEM, for [`kept::write`] (empty
    /// without lists).
    in_force_pem: Vec<u8>,
    /// Whether [`Material::reloads`] told of these contents (or they were
    /// loaded at start, before any connection): a reload that finds the
    /// same bytes then has nothing to tell.
    announced: bool,
    /// When the leaf certificate expires (Unix seconds).
    not_after: i64,
    key: Arc<CertifiedKey>,
    /// Checks certificates presented by servers we call (peers).
    server_verifier: Option<Arc<WebPkiServerVerifier>>,
    /// Checks certificates presented by clients that call us.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The subjects of the CAs whose revocation lists are in force (see
    /// [`read_crls`]).
    enforced: Vec<InForce>,
}

/// Reads the files. With [`ClientAuth::RequiredNamed`] the certificate
/// must carry that name itself: every peer checks it the same way, so one
/// that names something else would be refused by all of them (at start
/// that stops the node; on a reload the previous certificate is kept).
/// `previous` is what is loaded now (none at start): see [`read_crls`]
/// for the one difference it makes.
fn load(
    paths: &TlsPaths,
    provider: &Arc<CryptoProvider>,
    client_auth: &ClientAuth,
    previous: Option<&Loaded>,
    kept: Option<&Path>,
) -> Result<Loaded, TlsError> {
    // The stamp is taken first: a file replaced while it is read gives a
    // stamp that no longer matches, so the next handshake reads it again.
    let stamp = stamp(paths).map_err(|e| {
        let roles = [
            (Some(&paths.cert), FileRole::Cert),
            (Some(&paths.key), FileRole::Key),
            (paths.ca.as_ref(), FileRole::Ca),
            (paths.crl.as_ref(), FileRole::Crl),
        ];
        let (missing, role) = roles
            .into_iter()
            .find_map(|(p, role)| {
                p.filter(|p| std::fs::metadata(p).is_err())
                    .map(|p| (p, role))
            })
            .unwrap_or((&paths.cert, FileRole::Cert));
        TlsError::about(missing, role, e)
    })?;
    // Each file is read once and parsed from those bytes, so that what is
    // kept to compare with the next reload is what was loaded.
    let contents = Contents {
        cert: read_file(&paths.cert, FileRole::Cert)?,
        key: read_file(&paths.key, FileRole::Key)?,
        ca: (paths.ca.as_deref())
            .map(|p| read_file(p, FileRole::Ca))
            .transpose()?,
        crl: (paths.crl.as_deref())
            .map(|p| read_file(p, FileRole::Crl))
            .transpose()?,
    };
    let (cert_pem, key_pem) = (contents.cert.as_slice(), contents.key.as_slice());
    let (ca_pem, crl_pem) = (contents.ca.as_deref(), contents.crl.as_deref());
    let chain = read_certs(&paths.cert, cert_pem).map_err(|e| e.of(FileRole::Cert))?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| {
            TlsError::about(
                &paths.cert,
                FileRole::Cert,
                format!("not an X.509 certificate: {e}"),
            )
        })?
        .1
        .validity()
        .not_after
        .timestamp();
    let now = unix_seconds();
    if not_after <= now {
        tracing::warn!(
            cert = %paths.cert.display(),
            "this certificate has expired: clients and peers will refuse it"
        );
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsError::about(
            &paths.key,
            FileRole::Key,
            format!("no private key in PEM form ({e})"),
        )
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "it is the key of another certificate".to_string()
            }
            e => e.to_string(),
        };
        TlsError::about(
            &paths.key,
            FileRole::Key,
            format!("does not go with {}: {why}", paths.cert.display()),
        )
    })?;
    let mut enforced = Vec::new();
    let mut in_force_pem = Vec::new();
    let mut used_kept = false;
    let (server_verifier, client_verifier) = match (&paths.ca, ca_pem) {
        (Some(ca), Some(ca_pem)) => {
            let cas = read_certs(ca, ca_pem).map_err(|e| e.of(FileRole::Ca))?;
            let crls = match (&paths.crl, crl_pem) {
                (Some(crl), Some(crl_pem)) => {
                    let previous = previous.map(|p| p.enforced.as_slice());
                    let read = read_crls(crl, crl_pem, &cas, ca, previous, kept)
                        .map_err(|e| e.of(FileRole::Crl))?;
                    enforced = read.enforced;
                    in_force_pem = read.in_force_pem;
                    used_kept = read.used_kept;
                    read.lists
                }
                _ => Vec::new(),
            };
            let mut roots = RootCertStore::empty();
            for cert in cas {
                roots.add(cert).map_err(|e| {
                    TlsError::about(
                        ca,
                        FileRole::Ca,
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
            let roots = Arc::new(roots);
            // Revocation: a certificate of a CA without a list here is
            // not refused for that, and a list past its next update still
            // counts (a stale list refuses what it names rather than
            // everyone).
            let (file, role) = match &paths.crl {
                Some(crl) => (crl.as_path(), FileRole::Crl),
                None => (ca.as_path(), FileRole::Ca),
            };
            let server =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .with_crls(crls.clone())
                    .allow_unknown_revocation_status()
                    .build()
                    .map_err(|e| TlsError::about(file, role, e))?;
            let client = client_verifier(roots, crls, provider)
                .map_err(|e| TlsError::about(file, role, e))?;
            (Some(server), Some(client))
        }
        _ => (None, None),
    };
    let loaded = Loaded {
        stamp,
        contents,
        in_force_pem,
        announced: true,
        not_after,
        key: Arc::new(key),
        server_verifier,
        client_verifier,
        enforced,
    };
    if let (Some(crl), Some(verifier)) = (&paths.crl, &loaded.client_verifier) {
        check_own_revocation(&loaded.key, verifier.as_ref(), crl).map_err(|e| match (e, kept) {
            (TlsError::File { path, reason, role }, Some(record)) if used_kept => TlsError::File {
                path,
                reason: format!(
                    "{reason} (with the lists this node had in force before it stopped, \
                         kept in {}: give it a certificate they do not revoke, or delete that \
                         file to start on the file's lists)",
                    record.display()
                ),
                role,
            },
            (e, _) => e,
        })?;
    }
    if let ClientAuth::RequiredNamed(want) = client_auth {
        let own = own_name(&loaded);
        if own.as_deref() != Some(want.as_str()) {
            let named = match own {
                Some(n) => format!("names {n:?}"),
                None => "has no single common name in text".into(),
            };
            return Err(TlsError::about(
                &paths.cert,
                FileRole::Cert,
                format!(
                    "{named}, not {want:?}, the one name peers admit (--peer-cert-allowed-cn): \
                     its peers would refuse it"
                ),
            ));
        }
    }
    Ok(loaded)
}

/// What [`read_crls`] found.
struct Crls {
    /// Every list of the file, to check certificates against.
    lists: Vec<CertificateRevocationListDer<'static>>,
    /// The lists of the CAs of the CA file that have one there.
    enforced: Vec<InForce>,
    /// Those lists as PEM (see [`kept`]).
    in_force_pem: Vec<u8>,
    /// Whether a list kept from before a restart stands in for one of the
    /// file's.
    used_kept: bool,
}

/// The revocation lists in `path` (PEM) for the CAs `cas` (read from
/// `ca_path`). `previous` is [`Crls::enforced`] as loaded now (none at
/// start).
///
/// A list is matched to its CA by the issuer's name, so two CAs of one
/// name in the bundle would have one's list refuse every certificate of
/// the other (its signature does not verify with the other's key): a
/// list for a name that two CAs share is refused. So are two lists of one
/// issuer, of which only the first would be used.
///
/// A list whose issuer is none of the CAs is kept, with a warning: it
/// applies only to certificates that arrive with that issuer as an
/// intermediate CA. The list of a retired CA beside its successor's is the
/// usual case. But:
/// - at start, the file must hold a list of at least one CA of the CA
///   file: otherwise it names something else than what was meant, and the
///   node stops;
/// - on a reload, every CA whose list was in force and that the CA file
///   still holds must have a list in the new file: otherwise the files
///   are not taken (a list file replaced by another CA's, or one left
///   without a CA's list, would lift the revocations of a CA still
///   trusted). A CA that leaves the CA file takes its list's force with
///   it, so replacing a CA, say a leaked one, without its list takes
///   effect. To stop checking a CA, give it an empty list.
fn read_crls(
    path: &Path,
    pem: &[u8],
    cas: &[CertificateDer<'static>],
    ca_path: &Path,
    previous: Option<&[InForce]>,
    kept: Option<&Path>,
) -> Result<Crls, TlsError> {
    let mut lists = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not PEM revocation lists: {e}")))?;
    // At start, the lists kept from before (see [`kept`]) stand in for
    // older ones; on a reload, `previous` guards the same way.
    let mut used_kept = false;
    if previous.is_none()
        && let Some(record) = kept
    {
        let held = kept::read(record);
        if !held.is_empty() {
            (lists, used_kept) = kept::newest(lists, held, cas, path, record);
        }
    }
    let (enforced, orphans) = match_crls(&lists, cas, &ca_path.display().to_string(), previous)
        .map_err(|reason| TlsError::file(path, reason))?;
    for issuer in &orphans {
        tracing::warn!(
            crl = %path.display(),
            issuer = issuer.as_str(),
            "a revocation list whose issuer is none of the CAs loaded applies only to \
             certificates that arrive with that issuer as an intermediate CA"
        );
    }
    let in_force_pem = kept::pem_of(&lists, &enforced);
    Ok(Crls {
        lists,
        enforced,
        in_force_pem,
        used_kept,
    })
}

/// A CA's revocation list in force: whose it is and how new it is, so
/// that a reload can refuse an older list of that CA.
#[derive(Clone, Debug, PartialEq)]
struct InForce {
    /// The CA's subject (DER).
    subject: Vec<u8>,
    /// The CA's subject as text (RFC 4514), as messages and the operator
    /// name it.
    name: String,
    /// The list's CRL number (RFC 5280, 5.2.3), when it has one.
    number: Option<x509_parser::num_bigint::BigUint>,
    /// When the list was issued (its thisUpdate, Unix seconds).
    issued: i64,
}

impl InForce {
    /// Why `self`, a list of the same CA, is older than `current`, the
    /// one in force, if it is. CRL numbers decide when both lists carry
    /// one (a CA numbers its lists in increasing order); otherwise the
    /// times they were issued do. A list as new as the one in force (the
    /// same list, written again) is taken.
    fn older_than(&self, current: &InForce) -> Option<String> {
        match (&self.number, &current.number) {
            (Some(new), Some(now)) => (new < now)
                .then(|| format!("is number {new}, older than number {now}, the one in force")),
            _ => (self.issued < current.issued).then(|| {
                format!(
                    "was issued at {}, before the one in force ({})",
                    utc(self.issued),
                    utc(current.issued)
                )
            }),
        }
    }
}

impl From<&InForce> for issue::ListVersion {
    fn from(list: &InForce) -> Self {
        issue::ListVersion {
            issuer: list.name.clone(),
            number: list.number.as_ref().map(|n| n.to_string()),
            issued: list.issued,
        }
    }
}

impl InForce {
    /// The list `version` records, for [`InForce::older_than`] (a number
    /// that is not decimal counts as none).
    fn of_version(version: &issue::ListVersion) -> InForce {
        InForce {
            subject: Vec::new(),
            name: version.issuer.clone(),
            number: version
                .number
                .as_deref()
                .and_then(|n| x509_parser::num_bigint::BigUint::parse_bytes(n.as_bytes(), 10)),
            issued: version.issued,
        }
    }
}

/// A time in UTC (RFC 2822), for messages.
fn utc(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .ok()
        .and_then(|t| t.to_rfc2822().ok())
        .unwrap_or_else(|| format!("{unix} (Unix seconds)"))
}

/// Matches the revocation lists `lists` to the CAs `cas` (of the file
/// `ca_file`) under the rules of [`read_crls`], `previous` being what is
/// in force now (none at start): the lists of CAs in `cas`, and the
/// issuers (as text) of lists of none of them, or why the lists cannot be
/// used.
///
/// The signature of every list of a CA in `cas` is checked here with that
/// CA's key. rustls checks it only when a certificate of that CA is
/// presented, and a list that does not verify then refuses every one of
/// them: a wrong file would shut out a whole CA's clients at their next
/// handshake instead of being refused now. A signature algorithm that
/// this check does not know is left to rustls (its check at a handshake
/// still applies).
fn match_crls(
    lists: &[CertificateRevocationListDer<'_>],
    cas: &[CertificateDer<'_>],
    ca_file: &str,
    previous: Option<&[InForce]>,
) -> Result<(Vec<InForce>, Vec<String>), String> {
    if lists.is_empty() {
        return Err("holds no PEM certificate revocation list (BEGIN X509 CRL)".into());
    }
    let cas: Vec<_> = cas
        .iter()
        .filter_map(|ca| x509_parser::parse_x509_certificate(ca).ok())
        .map(|(_, ca)| ca)
        .collect();
    let mut issuers: Vec<Vec<u8>> = Vec::with_capacity(lists.len());
    let mut enforced: Vec<InForce> = Vec::new();
    let mut orphans = Vec::new();
    for crl in lists {
        let (_, parsed) = x509_parser::parse_x509_crl(crl)
            .map_err(|e| format!("not a certificate revocation list: {e}"))?;
        let raw = parsed.issuer().as_raw().to_vec();
        let text = parsed.issuer().to_string();
        if issuers.contains(&raw) {
            return Err(format!(
                "holds two revocation lists of {text:?}: only the first would be used; keep \
                 the newest alone"
            ));
        }
        let mut of_list = cas
            .iter()
            .filter(|ca| ca.subject().as_raw() == raw.as_slice());
        match (of_list.next(), of_list.next()) {
            (Some(ca), None) => {
                match parsed.verify_signature(ca.public_key()) {
                    Ok(()) => {}
                    Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                        tracing::debug!(
                            issuer = text.as_str(),
                            "a revocation list's signature algorithm is checked at handshakes only"
                        );
                    }
                    Err(e) => {
                        return Err(format!(
                            "holds a revocation list of {text:?} whose signature does not verify \
                             with the key of that CA in {ca_file} ({e}): it would refuse every \
                             certificate of that CA; sign the list with the CA's own key"
                        ));
                    }
                }
                enforced.push(InForce {
                    subject: raw.clone(),
                    name: text.clone(),
                    number: parsed.crl_number().cloned(),
                    issued: parsed.last_update().timestamp(),
                });
            }
            (None, _) => orphans.push(format!("{text:?}")),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "holds a revocation list issued by {text:?}, a name that more than one CA \
                     in {ca_file} has: the list would refuse every certificate of the others; \
                     give the CAs distinct names"
                ));
            }
        }
        issuers.push(raw);
    }
    let Some(previous) = previous else {
        if enforced.is_empty() {
            return Err(format!(
                "holds no revocation list of the CAs in {ca_file}, only of {}: it would refuse \
                 nothing they admit",
                orphans.join(", ")
            ));
        }
        return Ok((enforced, orphans));
    };
    for current in previous {
        if !cas
            .iter()
            .any(|ca| ca.subject().as_raw() == current.subject.as_slice())
        {
            continue;
        }
        let name = &current.name;
        match enforced.iter().find(|e| e.subject == current.subject) {
            None => {
                return Err(format!(
                    "holds no revocation list of {name:?}, a CA of {ca_file} whose list is in \
                     force: its revocations would be lifted; give it an empty list to stop \
                     checking it"
                ));
            }
            Some(new) => {
                if let Some(why) = new.older_than(current) {
                    return Err(format!(
                        "holds a revocation list of {name:?} that {why}: it could admit \
                         certificates revoked since; give the newest list of that CA"
                    ));
                }
            }
        }
    }
    Ok((enforced, orphans))
}

/// Checks certificates presented by clients against the CAs `roots` and
/// the revocation lists `crls`. A certificate of a CA without a list is
/// not refused for that, and a list past its next update still counts (a
/// stale list refuses what it names rather than everyone).
fn client_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .build()
}

/// Checks this node's own certificate against the revocation lists, when
/// it comes from one of their CAs (the peer port's usually does): a list
/// that revokes it, or whose signature does not verify, would have every
/// peer refuse this node, or this node refuse every peer. At start that
/// stops the node; on a reload the previous files are kept. Any other
/// reason the certificate would not pass as a client (another CA, no
/// client-authentication use) is not this check's business.
fn check_own_revocation(
    key: &CertifiedKey,
    verifier: &dyn ClientCertVerifier,
    crl: &Path,
) -> Result<(), TlsError> {
    own_revocation(&key.cert, verifier)
        .map_err(|reason| TlsError::about(crl, FileRole::Crl, reason))
}

/// Why the revocation lists of `verifier` cannot stand beside this node's
/// own certificate `chain` (see [`check_own_revocation`]), if they cannot.
fn own_revocation(
    chain: &[CertificateDer<'_>],
    verifier: &dyn ClientCertVerifier,
) -> Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Ok(());
    };
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
            Err("revokes this node's own certificate: its peers would refuse it".into())
        }
        Err(rustls::Error::InvalidCertRevocationList(e)) => Err(format!(
            "cannot be used to check certificates of its CA: {e:?}"
        )),
        _ => Ok(()),
    }
}

/// The certificates in `pem`, read from `path` (for messages).
fn read_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// A certificate, its key and a CA, reloaded from their files when they
/// change. Shared by the listeners and the peer client of one node.
pub struct Material {
    paths: TlsPaths,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    /// What the port this material serves demands of clients.
    client_auth: ClientAuth,
    /// Told the leaf's expiry (Unix seconds) at every load.
    observer: std::sync::Mutex<Option<ExpiryObserver>>,
    /// The stamp of files that failed to load: not tried again (by every
    /// handshake, which anyone can start) until they change once more.
    /// Held while loading, so that one caller loads and the others go on
    /// with what is held.
    failed: std::sync::Mutex<Option<Stamp>>,
    /// The minute (Unix seconds / 60) in which a certificate was last
    /// refused for its common name and logged.
    refusal_logged: AtomicI64,
    /// Counts successful reloads, for [`Material::reloads`].
    reloaded: tokio::sync::watch::Sender<u64>,
    /// Where the revocation lists in force are kept across restarts (see
    /// [`kept`]).
    kept: Option<PathBuf>,
    /// Set by [`Material::keep_in_force`]: until then nothing is written
    /// to `kept`.
    keeping: std::sync::atomic::AtomicBool,
}

type ExpiryObserver = Box<dyn Fn(i64) + Send + Sync>;

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("paths", &self.paths)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Whether a port asks clients for a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    Off,
    /// Clients must present one signed by the CA, or the handshake fails.
    Required,
    /// As `Required`, and the certificate's subject must have this one
    /// common name ([`client_name`]), or the handshake fails.
    RequiredNamed(String),
}

impl Material {
    /// Loads the files now; an error names the file and what is wrong.
    pub fn load(paths: TlsPaths, client_auth: ClientAuth) -> Result<Arc<Self>, TlsError> {
        Material::load_keeping(paths, client_auth, None)
    }

    /// As [`Material::load`], keeping the revocation lists in force at
    /// `kept` (see [`kept::path_in`]): at start a CA's list kept there
    /// stands in for an older one in the file, and every list that comes
    /// into force is written there.
    pub fn load_keeping(
        paths: TlsPaths,
        client_auth: ClientAuth,
        kept: Option<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        if client_auth != ClientAuth::Off && paths.ca.is_none() {
            return Err(TlsError::Config(
                "client certificates are required but no CA is given to check them".into(),
            ));
        }
        let provider = provider();
        // Files that change while they are read (a CA bundle half
        // rewritten) are read again, a few times: what is loaded at start
        // becomes what later reloads are held to, and what is kept.
        let mut loaded = load(&paths, &provider, &client_auth, None, kept.as_deref())?;
        for _ in 0..START_READS {
            if stamp(&paths).is_ok_and(|now| now == loaded.stamp) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            loaded = load(&paths, &provider, &client_auth, None, kept.as_deref())?;
        }
        // Still changing: the next handshake or refresh reads them again
        // and announces them then, and only then are they kept.
        loaded.announced = stamp(&paths).is_ok_and(|now| now == loaded.stamp);
        Ok(Arc::new(Material {
            paths,
            provider,
            current: RwLock::new(Arc::new(loaded)),
            client_auth,
            observer: std::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
            refusal_logged: AtomicI64::new(0),
            reloaded: tokio::sync::watch::Sender::new(0),
            kept,
            keeping: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// From now on, writes the revocation lists in force where
    /// [`Material::load_keeping`] was told to keep them: now, and after
    /// every reload that changes them. Called once the node holds its data
    /// directory, so that a process that fails to start (another one holds
    /// the directory, or it belongs to another node) changes nothing there.
    pub fn keep_in_force(&self) {
        self.keeping.store(true, Ordering::SeqCst);
        let held = self.held();
        if let Some(kept) = &self.kept
            && held.announced
        {
            kept::write(kept, &held.in_force_pem);
        }
    }

    /// Changes after every successful reload of files whose contents
    /// changed, so that connections admitted under what was loaded before
    /// can be checked again with [`Material::admits`], and peer calls move
    /// to connections checked against what is loaded now. Files touched,
    /// or written again with the same bytes, do not count.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// Whether a client presenting `chain` (leaf first) would be admitted
    /// by a handshake now: against the CA loaded now, at the time now, and
    /// with the port's common name if it has one. A port that asks for no
    /// certificate admits anyone.
    pub fn admits(&self, chain: &[CertificateDer<'_>]) -> bool {
        if self.client_auth == ClientAuth::Off {
            return true;
        }
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verify_client(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    /// A client's certificate checked against the CA loaded now and, with
    /// [`ClientAuth::RequiredNamed`], for the port's common name.
    fn verify_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match &self.current().client_verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now)?,
            None => {
                return Err(rustls::Error::General(
                    "no CA to check clients against".into(),
                ));
            }
        };
        if let ClientAuth::RequiredNamed(want) = &self.client_auth {
            let name = client_name(end_entity.as_ref());
            if name.as_deref() != Some(want.as_str()) {
                // Only holders of a certificate of our own CA get here: a
                // peer with the wrong certificate, or a client's
                // certificate tried on the peer port. Either is worth
                // seeing in the log, once a minute at most (anyone with
                // such a certificate can make handshakes fail at will).
                let minute = unix_seconds() / 60;
                if self.refusal_logged.swap(minute, Ordering::Relaxed) != minute {
                    tracing::warn!(
                        name = ?name,
                        allowed = %want,
                        "refused a certificate of the peer CA whose common name is not the \
                         one peers carry (--peer-cert-allowed-cn); further refusals this \
                         minute are not logged"
                    );
                }
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(verified)
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Why peers would refuse this node's own certificate, if they would,
    /// checked as they check it: as a client certificate on their peer
    /// ports (signed by the peer CA, for client authentication, with the
    /// allowed common name if there is one) and, when `host` (the host of
    /// this node's peer URL) is known, as a server certificate for that
    /// name. Validity in time is left out: a clock that is off, or a
    /// certificate about to be replaced, is reported where it is loaded
    /// and may mend itself; these cannot.
    ///
    /// A certificate made by hand without `extendedKeyUsage=clientAuth`,
    /// or for another name than the peer URL's, would otherwise start a
    /// node whose every peer call fails in its handshake.
    pub fn check_as_peer(&self, host: Option<&str>) -> Result<(), String> {
        let loaded = self.current();
        let Some((leaf, intermediates)) = loaded.key.cert.split_first() else {
            return Ok(());
        };
        // Now, or the nearest time within the leaf's validity: when only
        // the chain, the names and the usages can fail.
        let now = unix_seconds();
        let at = x509_parser::parse_x509_certificate(leaf)
            .ok()
            .map(|(_, c)| {
                let v = c.validity();
                let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
                now.min(to.saturating_sub(1)).max(from.saturating_add(1))
            })
            .unwrap_or(now);
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(at).unwrap_or(0),
        ));
        use rustls::CertificateError as E;
        let ignored = |e: &rustls::Error| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    E::Expired
                        | E::ExpiredContext { .. }
                        | E::NotValidYet
                        | E::NotValidYetContext { .. }
                )
            )
        };
        let purpose = |e: &rustls::Error| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    E::InvalidPurpose | E::InvalidPurposeContext { .. }
                )
            )
        };
        let issuer =
            |e: &rustls::Error| matches!(e, rustls::Error::InvalidCertificate(E::UnknownIssuer));
        match self.verify_client(leaf, intermediates, at) {
            Err(e) if ignored(&e) => {}
            Err(e) if purpose(&e) => {
                return Err(
                    "is not a certificate for client authentication (its extended key \
                            usage lacks clientAuth): replicas present their certificates to \
                            each other as clients too, so its peers would refuse it"
                        .into(),
                );
            }
            Err(e) if issuer(&e) => {
                return Err(
                    "is not signed by the peers' CA (--peer-tls-ca, or --tls-ca): its \
                            peers would refuse it"
                        .into(),
                );
            }
            Err(rustls::Error::InvalidCertificate(E::ApplicationVerificationFailure))
                if matches!(self.client_auth, ClientAuth::RequiredNamed(_)) =>
            {
                // Its common name: reported by `load` with the name wanted.
            }
            Err(e) => return Err(format!("would be refused by its peers: {e}")),
            Ok(_) => {}
        }
        let Some(host) = host else {
            return Ok(());
        };
        let Ok(name) = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        else {
            return Ok(());
        };
        let Some(verifier) = &loaded.server_verifier else {
            return Ok(());
        };
        match verifier.verify_server_cert(leaf, intermediates, &name, &[], at) {
            Err(e) if ignored(&e) => Ok(()),
            Err(e) if purpose(&e) => Err("is not a certificate for server authentication (its \
                                          extended key usage lacks serverAuth): its peers \
                                          would refuse it"
                .into()),
            Err(rustls::Error::InvalidCertificate(
                E::NotValidForName | E::NotValidForNameContext { .. },
            )) => Err(format!(
                "does not name {host}, the host of this node's peer URL: peers calling it \
                 there would refuse it (add {host} to its subject alternative names)"
            )),
            Err(e) => Err(format!(
                "would be refused by peers calling it at {host}: {e}"
            )),
            Ok(_) => Ok(()),
        }
    }

    /// The common name of the certificate this node presents (see
    /// [`client_name`]), as loaded now.
    #[cfg(test)]
    fn own_name(&self) -> Option<String> {
        own_name(&self.current())
    }

    /// Calls `f` with the certificate's expiry (Unix seconds) now and after
    /// every reload (for the expiry metric).
    pub fn observe_expiry(&self, f: impl Fn(i64) + Send + Sync + 'static) {
        f(self.current().not_after);
        if let Ok(mut o) = self.observer.lock() {
            *o = Some(Box::new(f));
        }
    }

    /// Reloads the files if they changed. Handshakes do this themselves;
    /// this is for a port whose connections are long-lived (the peer
    /// port), so that what is on disk, and the expiry metric, are not
    /// ignored until the next connection.
    pub fn refresh(&self) {
        let _ = self.current();
    }

    /// The material held now, without looking at the files. A panic while
    /// the lock was held left a whole `Arc` in it: still usable.
    fn held(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The material to use for a handshake starting now: reloaded first if
    /// any file changed since it was read.
    fn current(&self) -> Arc<Loaded> {
        let held = self.held();
        let now = match stamp(&self.paths) {
            Ok(now) if now != held.stamp => now,
            // Unchanged, or a file missing for a moment (mid-swap): keep
            // what we have.
            _ => return held,
        };
        // Another handshake is loading them right now: go on with these.
        let Ok(mut failed) = self.failed.try_lock() else {
            return held;
        };
        if failed.as_ref() == Some(&now) {
            return held;
        }
        match load(
            &self.paths,
            &self.provider,
            &self.client_auth,
            Some(&held),
            None,
        ) {
            Ok(mut fresh) => {
                *failed = None;
                // Open connections are checked again only against files
                // that did not change while they were read: a CA bundle
                // rewritten in place and read half-way would otherwise
                // close the connections of the CAs not read yet. Files
                // still changing are read again by the next handshake or
                // refresh, which tells the connections then, even if it
                // finds the bytes read this time.
                let unchanged = held.announced && fresh.contents == held.contents;
                let settled = stamp(&self.paths).is_ok_and(|now| now == fresh.stamp);
                fresh.announced = unchanged || settled;
                let fresh = Arc::new(fresh);
                let mut g = match self.current.write() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *g = fresh.clone();
                drop(g);
                if unchanged {
                    // Touched or rewritten with the same bytes: the new
                    // stamp is kept so they are not read again, and
                    // nothing that depends on what they hold is renewed
                    // (every peer stream would reopen for nothing).
                    tracing::debug!(
                        cert = %self.paths.cert.display(),
                        "TLS files touched, their contents unchanged"
                    );
                    return fresh;
                }
                tracing::info!(
                    cert = %self.paths.cert.display(),
                    changed = %held.contents.changed_parts(&fresh.contents).join(", "),
                    "TLS files reloaded"
                );
                if settled {
                    // Lists in force from an unsettled read are kept only
                    // once a settled read confirms them: a crash in
                    // between restarts on the lists kept before, which a
                    // half-read file must never replace.
                    if let Some(kept) = &self.kept
                        && self.keeping.load(Ordering::SeqCst)
                    {
                        kept::write(kept, &fresh.in_force_pem);
                    }
                    self.reloaded.send_modify(|n| *n += 1);
                }
                if let Ok(o) = self.observer.lock()
                    && let Some(f) = o.as_ref()
                {
                    f(fresh.not_after);
                }
                fresh
            }
            Err(e) => {
                *failed = Some(now);
                tracing::warn!(
                    error = %e,
                    "TLS files changed but cannot be loaded; still using the previous ones"
                );
                held
            }
        }
    }

    /// The configuration of a listening port.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = match self.client_auth {
            ClientAuth::Off => builder
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Current(self.clone()))),
            ClientAuth::Required | ClientAuth::RequiredNamed(_) => builder
                .with_client_cert_verifier(Arc::new(Current(self.clone())))
                .with_cert_resolver(Arc::new(Current(self.clone()))),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No resumption: every connection shows a certificate checked
        // against the CA of the moment, and connections are long-lived, so
        // the full handshake costs little.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The configuration for calling peers: verify them against the CA and
    /// their URL's host name, present our own certificate.
    pub fn client_config(self: &Arc<Self>) -> Result<ClientConfig, TlsError> {
        if self.paths.ca.is_none() {
            return Err(TlsError::Config(
                "calling peers over TLS needs the CA that signs their certificates".into(),
            ));
        }
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Current(self.clone())))
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// rustls' hooks, answered from the current material.
#[derive(Debug)]
struct Current(Arc<Material>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn own_name(loaded: &Loaded) -> Option<String> {
    loaded
        .key
        .cert
        .first()
        .and_then(|leaf| client_name(leaf.as_ref()))
}

/// Signature checks do not depend on which CA is current, only on the
/// algorithms the provider supports.
fn algorithms(m: &Material) -> &rustls::crypto::WebPkiSupportedAlgorithms {
    &m.provider.signature_verification_algorithms
}

impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.0.current().server_verifier {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::General(
                "no CA to check peers against".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.0))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.0))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.0).supported_schemes()
    }
}

impl ClientCertVerifier for Current {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would have to borrow from material that a reload may
        // replace; they are optional, and clients here have one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.0))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.0))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.0).supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::KeyPair;

    use super::*;

    /// A CA and a certificate it signs for `names`, written into `dir`.
    fn files(dir: &Path, names: &[&str]) -> TlsPaths {
        let paths = TlsPaths {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: Some(dir.join("ca.crt")),
            crl: None,
        };
        dev_ca::make(&paths, names).expect("certificates");
        paths
    }

    /// Serves `app` over TLS with `material` on a loopback port, reading
    /// its sockets through a buffer of `read_buffer` bytes if given.
    async fn serve_tls(
        material: &Arc<Material>,
        app: axum::Router,
        read_buffer: Option<usize>,
    ) -> std::net::SocketAddr {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let config = material.server_config().expect("server config");
        let listener =
            listener::TlsListener::new(tcp, config, "test", read_buffer).expect("listener");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[test]
    fn a_client_certificate_names_its_holder_by_its_one_common_name() {
        let cert = |cn: Option<&str>| {
            let mut params =
                rcgen::CertificateParams::new(vec!["client.example".to_owned()]).expect("params");
            params.distinguished_name = rcgen::DistinguishedName::new();
            if let Some(cn) = cn {
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, cn);
            }
            params
                .self_signed(&KeyPair::generate().expect("key"))
                .expect("certificate")
                .der()
                .to_vec()
        };
        assert_eq!(client_name(&cert(Some("app"))).as_deref(), Some("app"));
        assert_eq!(client_name(&cert(None)), None);
        assert_eq!(client_name(b"not a certificate"), None);
    }

    /// Writes a certificate for `localhost` with the extended key usages
    /// `usages`, signed by the CA `ca`, and `trusted` as the CA file.
    fn peer_files(
        dir: &Path,
        ca: &issue::Issued,
        trusted: &issue::Issued,
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> TlsPaths {
        let ca_key = KeyPair::from_pem(&ca.key_pem).expect("CA key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).expect("issuer");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.extended_key_usages = usages;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        let paths = TlsPaths {
            cert: dir.join("peer.crt"),
            key: dir.join("peer.key"),
            ca: Some(dir.join("ca.crt")),
            crl: None,
        };
        std::fs::write(&paths.cert, cert.pem()).expect("write");
        std::fs::write(&paths.key, key.serialize_pem()).expect("write");
        std::fs::write(dir.join("ca.crt"), &trusted.cert_pem).expect("write");
        paths
    }

    #[test]
    fn a_peer_certificate_its_peers_would_refuse_is_named_for_why() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth as Client, ServerAuth as Server};
        let day = std::time::Duration::from_secs(86_400);
        let ca = issue::new_ca("peers", day).expect("CA");
        let other = issue::new_ca("someone else", day).expect("CA");
        let dir = tempfile::tempdir().expect("dir");
        let check = |paths: TlsPaths, host: Option<&str>| {
            Material::load(paths, ClientAuth::Required)
                .expect("load")
                .check_as_peer(host)
        };

        let both = peer_files(dir.path(), &ca, &ca, vec![Server, Client]);
        assert_eq!(check(both.clone(), Some("localhost")), Ok(()));
        // A node that joins does not know its peer URL: only the client
        // side is checked.
        assert_eq!(check(both.clone(), None), Ok(()));
        let why = check(both, Some("db-0.example")).expect_err("another name");
        assert!(why.contains("does not name db-0.example"), "{why}");

        // Made for a web server: no client authentication.
        let server_only = peer_files(dir.path(), &ca, &ca, vec![Server]);
        let why = check(server_only, Some("localhost")).expect_err("server only");
        assert!(why.contains("lacks clientAuth"), "{why}");
        let client_only = peer_files(dir.path(), &ca, &ca, vec![Client]);
        let why = check(client_only, Some("localhost")).expect_err("client only");
        assert!(why.contains("lacks serverAuth"), "{why}");
        // No extended key usage at all is good for both.
        assert_eq!(
            check(peer_files(dir.path(), &ca, &ca, vec![]), Some("localhost")),
            Ok(())
        );

        let foreign = peer_files(dir.path(), &other, &ca, vec![Server, Client]);
        let why = check(foreign, Some("localhost")).expect_err("another CA");
        assert!(why.contains("not signed by the peers' CA"), "{why}");
    }

    #[tokio::test]
    async fn a_peer_called_by_a_name_its_certificate_lacks_fails_with_that_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let material =
            Material::load(files(dir.path(), &["localhost"]), ClientAuth::Required).expect("load");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let port = serve_tls(&material, app, None).await.port();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(material.client_config().expect("client config"))
            .build()
            .expect("client");

        let ok = client
            .get(format!("https://localhost:{port}/"))
            .send()
            .await
            .expect("mutual TLS with the name the certificate has");
        assert_eq!(ok.status(), 200);

        let err = client
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("the certificate does not name 127.0.0.1");
        let mut chain = vec![err.to_string()];
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            chain.push(format!("{s:?}"));
            source = s.source();
        }
        let reason = failure_reason(&err).unwrap_or_else(|| panic!("no TLS reason in {chain:#?}"));
        assert!(reason.contains("not valid for"), "{reason}");
    }

    #[tokio::test]
    async fn with_an_allowed_name_the_peer_port_refuses_other_certificates_of_its_ca() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = issue::new_ca("test CA", std::time::Duration::from_secs(3600)).expect("CA");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, &ca.cert_pem).expect("write CA");
        // A certificate of that CA for localhost, named `cn`.
        let leaf = |stem: &str, cn: &str| {
            let issued = issue::issue(
                &ca,
                cn,
                &["localhost".to_owned()],
                std::time::Duration::from_secs(3600),
            )
            .expect("leaf");
            let paths = TlsPaths {
                cert: dir.path().join(format!("{stem}.crt")),
                key: dir.path().join(format!("{stem}.key")),
                ca: Some(ca_path.clone()),
                crl: None,
            };
            std::fs::write(&paths.cert, &issued.cert_pem).expect("write cert");
            std::fs::write(&paths.key, &issued.key_pem).expect("write key");
            paths
        };
        let app = || axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let named = Material::load(
            leaf("peer-a", "kv.db"),
            ClientAuth::RequiredNamed("kv.db".into()),
        )
        .expect("load");
        assert_eq!(named.own_name().as_deref(), Some("kv.db"));
        let named_port = serve_tls(&named, app(), None).await.port();
        let open = Material::load(leaf("peer-b", "kv.db"), ClientAuth::Required).expect("load");
        let open_port = serve_tls(&open, app(), None).await.port();

        let call = |paths: TlsPaths, port: u16| async move {
            let m = Material::load(paths, ClientAuth::Off).expect("caller");
            let client = reqwest::Client::builder()
                .tls_backend_preconfigured(m.client_config().expect("client config"))
                .build()
                .expect("client");
            client
                .get(format!("https://localhost:{port}/"))
                .send()
                .await
        };
        let replica = leaf("peer-c", "kv.db");
        let app_cert = leaf("my-app", "my-app");

        let ok = call(replica.clone(), named_port)
            .await
            .expect("another replica's certificate carries the allowed name");
        assert_eq!(ok.status(), 200);
        let err = call(app_cert.clone(), named_port)
            .await
            .expect_err("a client certificate of the same CA names its holder");
        let reason = failure_reason(&err).unwrap_or_else(|| panic!("no TLS reason in {err:?}"));
        assert!(reason.contains("AccessDenied"), "{reason}");
        // What the allowed name changes: without it the same CA admits the
        // client certificate.
        let passed = call(app_cert, open_port)
            .await
            .expect("without an allowed name, the CA alone decides");
        assert_eq!(passed.status(), 200);

        // Renewed under another name: every peer would refuse it, so the
        // node keeps the certificate it has, until a good one arrives.
        let served = || named.current().key.cert[0].as_ref().to_vec();
        let before = served();
        std::thread::sleep(std::time::Duration::from_millis(20));
        leaf("peer-a", "someone else");
        named.refresh();
        assert_eq!(named.own_name().as_deref(), Some("kv.db"));
        assert_eq!(served(), before, "the previous certificate is kept");
        let ok = call(replica.clone(), named_port)
            .await
            .expect("peers still get through");
        assert_eq!(ok.status(), 200);
        std::thread::sleep(std::time::Duration::from_millis(20));
        leaf("peer-a", "kv.db");
        named.refresh();
        assert_ne!(served(), before, "a certificate with the name is taken");
        assert_eq!(named.own_name().as_deref(), Some("kv.db"));
    }

    /// A request on an open connection: its status line, or the error
    /// that shows the server closed it.
    async fn exchange<S>(conn: &mut S) -> std::io::Result<String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        conn.flush().await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // "ok" is the whole body: the answer is complete once it arrives.
        while !got.ends_with(b"ok") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    /// Serves "ok" at `/` with `material` on a loopback port, as the node
    /// serves its ports: connections are checked again after reloads.
    async fn serve_checked(material: &Arc<Material>) -> u16 {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        let listener = listener::TlsListener::new(
            tcp,
            material.server_config().expect("config"),
            "test",
            None,
        )
        .expect("listener");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(crate::net::serve(
            listener,
            app,
            crate::net::IDLE_TIMEOUT,
            Some(material.clone()),
            std::future::pending(),
        ));
        port
    }

    /// A TLS connection to `port` presenting `cert` and `key` (files),
    /// trusting `ca`, after one exchange (TLS 1.3 reports a refused client
    /// certificate only on the first read after the handshake).
    async fn connect_with(
        port: u16,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let m = Material::load(
            TlsPaths {
                cert,
                key,
                ca: Some(ca),
                crl: None,
            },
            ClientAuth::Off,
        )
        .expect("client");
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(m.client_config().expect("config")));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await?;
        exchange(&mut tls).await?;
        Ok(tls)
    }

    /// Asserts that the files were reloaded since `reloads` last looked,
    /// then gives the connections a moment to check themselves again.
    async fn assert_reloaded(reloads: &mut tokio::sync::watch::Receiver<u64>) {
        assert!(
            reloads.has_changed().expect("material alive"),
            "the files were not reloaded"
        );
        reloads.borrow_and_update();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    /// Reads until the server closes `conn`; what it sent first.
    async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            conn.read_to_end(&mut rest),
        )
        .await
        .expect("closed within 10 s");
        assert!(closed.is_ok(), "closed cleanly: {closed:?}");
        rest
    }

    #[tokio::test]
    async fn a_connection_whose_certificate_a_reloaded_ca_no_longer_admits_is_closed() {
        let (dir, new_dir) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let old_ca = TestCa::new(dir.path(), "old CA");
        let new_ca = TestCa::new(new_dir.path(), "new CA");
        let both = format!("{}{}", old_ca.ca.cert_pem, new_ca.ca.cert_pem);
        let (cert, key, _) = old_ca.leaf("server");
        let server = Material::load(
            TlsPaths {
                cert,
                key,
                ca: Some(old_ca.ca_file()),
                crl: None,
            },
            ClientAuth::Required,
        )
        .expect("server");
        let port = serve_checked(&server).await;
        // Clients that trust both CAs, so that only the server's view of
        // their certificates changes.
        let client_ca = dir.path().join("clients-trust.crt");
        std::fs::write(&client_ca, &both).expect("write");
        let connect = |ca: &TestCa, cn: &str| {
            let (cert, key, _) = ca.leaf(cn);
            connect_with(port, cert, key, client_ca.clone())
        };
        let reload = || {
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut reloads = server.reloads();

        let mut open = connect(&old_ca, "old-app").await.expect("admitted");
        // A reload that keeps the CA (the server's certificate renewed)
        // keeps the connection.
        reload();
        old_ca.leaf("server");
        server.refresh();
        assert_reloaded(&mut reloads).await;
        assert_eq!(
            exchange(&mut open).await.expect("still open"),
            "HTTP/1.1 200 OK"
        );
        // A bundle of the old and the new CA, as in a rotation, still
        // admits it.
        reload();
        std::fs::write(old_ca.ca_file(), &both).expect("write");
        server.refresh();
        assert_reloaded(&mut reloads).await;
        let mut bundled = connect(&new_ca, "new-app").await.expect("admitted");
        assert_eq!(
            exchange(&mut open).await.expect("still open"),
            "HTTP/1.1 200 OK"
        );
        // The old CA dropped: its certificate's connection is closed, with
        // no request from it needed, and a new one is refused.
        reload();
        std::fs::write(old_ca.ca_file(), &new_ca.ca.cert_pem).expect("write");
        server.refresh();
        let rest = closed_by_server(&mut open).await;
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        connect(&old_ca, "old-app-2")
            .await
            .expect_err("the old CA's certificates are refused");
        assert_eq!(
            exchange(&mut bundled).await.expect("the new CA's stays"),
            "HTTP/1.1 200 OK"
        );
    }

    /// The certificates of `pem`, leaf first.
    fn chain_of(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain")
    }

    /// A CA in `dir` (`ca.crt`), and a way to issue its certificates for
    /// localhost as files: (certificate, key, the certificate's PEM).
    struct TestCa {
        dir: PathBuf,
        ca: issue::Issued,
    }

    impl TestCa {
        fn new(dir: &Path, name: &str) -> TestCa {
            let ca = issue::new_ca(name, std::time::Duration::from_secs(3600)).expect("CA");
            std::fs::write(dir.join("ca.crt"), &ca.cert_pem).expect("write CA");
            TestCa {
                dir: dir.to_owned(),
                ca,
            }
        }

        fn ca_file(&self) -> PathBuf {
            self.dir.join("ca.crt")
        }

        fn leaf(&self, stem: &str) -> (PathBuf, PathBuf, String) {
            let issued = issue::issue(
                &self.ca,
                stem,
                &["localhost".to_owned()],
                std::time::Duration::from_secs(3600),
            )
            .expect("leaf");
            let (cert, key) = (
                self.dir.join(format!("{stem}.crt")),
                self.dir.join(format!("{stem}.key")),
            );
            std::fs::write(&cert, &issued.cert_pem).expect("write cert");
            std::fs::write(&key, &issued.key_pem).expect("write key");
            (cert, key, issued.cert_pem)
        }

        /// Writes a revocation list of this CA naming `revoked` to `ca.crl`.
        fn revoke(&self, revoked: &[&str], number: u64) -> PathBuf {
            let path = self.dir.join("ca.crl");
            let pem = issue::revocation_list(
                &self.ca,
                revoked,
                number,
                std::time::Duration::from_secs(3600),
            )
            .expect("CRL");
            std::fs::write(&path, pem).expect("write CRL");
            path
        }
    }

    #[tokio::test]
    async fn a_certificate_on_the_revocation_list_is_refused_and_its_connection_closed() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new(dir.path(), "CA");
        let (cert, key, server_pem) = ca.leaf("server");
        let server = Material::load(
            TlsPaths {
                cert,
                key,
                ca: Some(ca.ca_file()),
                crl: Some(ca.revoke(&[], 1)),
            },
            ClientAuth::Required,
        )
        .expect("an empty list loads");
        let port = serve_checked(&server).await;
        let (leaked_cert, leaked_key, leaked_pem) = ca.leaf("leaked");
        let (kept_cert, kept_key, _) = ca.leaf("kept");
        let mut leaked = connect_with(port, leaked_cert.clone(), leaked_key.clone(), ca.ca_file())
            .await
            .expect("not revoked yet");
        let mut kept = connect_with(port, kept_cert, kept_key, ca.ca_file())
            .await
            .expect("admitted");

        std::thread::sleep(std::time::Duration::from_millis(20));
        ca.revoke(&[&leaked_pem], 2);
        server.refresh();
        let rest = closed_by_server(&mut leaked).await;
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        connect_with(port, leaked_cert.clone(), leaked_key.clone(), ca.ca_file())
            .await
            .expect_err("a revoked certificate gets no new connection");
        assert_eq!(
            exchange(&mut kept).await.expect("others stay"),
            "HTTP/1.1 200 OK"
        );

        // A list that cannot be taken (it revokes the server's own
        // certificate) is not loaded, and closes nothing.
        let mut reloads = server.reloads();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let server_now = server.current().key.cert[0].clone();
        ca.revoke(&[&leaked_pem, &server_pem], 3);
        server.refresh();
        assert!(!reloads.has_changed().expect("alive"), "a refused reload");
        assert_eq!(server.current().key.cert[0], server_now);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            exchange(&mut kept).await.expect("still open"),
            "HTTP/1.1 200 OK"
        );
        reloads.borrow_and_update();

        // Calling out, as peers do: a server whose certificate the caller's
        // list names is refused.
        let (caller_cert, caller_key, _) = ca.leaf("caller");
        let caller = Material::load(
            TlsPaths {
                cert: caller_cert,
                key: caller_key,
                ca: Some(ca.ca_file()),
                crl: Some(ca.revoke(&[&server_pem], 4)),
            },
            ClientAuth::Off,
        )
        .expect("caller");
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(caller.client_config().expect("config")));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let err = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect_err("a revoked server certificate");
        assert!(format!("{err:?}").contains("Revoked"), "{err:?}");

        // A list that loads again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        ca.revoke(&[&leaked_pem], 5);
        server.refresh();
        assert_reloaded(&mut reloads).await;

        // An older list of this CA, one from before the leak (a stale copy
        // or a restored backup): taking it would admit the leaked
        // certificate again, so the previous files stay. The same list
        // written again is taken.
        std::thread::sleep(std::time::Duration::from_millis(20));
        ca.revoke(&[], 4);
        server.refresh();
        assert!(!reloads.has_changed().expect("alive"), "a refused reload");
        connect_with(port, leaked_cert.clone(), leaked_key.clone(), ca.ca_file())
            .await
            .expect_err("still revoked after an older list");
        std::thread::sleep(std::time::Duration::from_millis(20));
        ca.revoke(&[&leaked_pem], 5);
        server.refresh();
        assert_reloaded(&mut reloads).await;

        // The list replaced by one of another CA alone: taking it would
        // lift every revocation of this CA, still trusted, so the previous
        // files stay.
        let crl_file = server.paths().crl.clone().expect("crl");
        let kept_list = std::fs::read(&crl_file).expect("list");
        let stranger_dir = tempfile::tempdir().expect("dir");
        let stranger = TestCa::new(stranger_dir.path(), "another CA");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::copy(stranger.revoke(&[], 1), &crl_file).expect("copy");
        server.refresh();
        assert!(!reloads.has_changed().expect("alive"), "a refused reload");
        connect_with(port, leaked_cert.clone(), leaked_key.clone(), ca.ca_file())
            .await
            .expect_err("still revoked");
        // Beside this CA's list, another CA's is left out.
        let mut both = kept_list.clone();
        both.extend(std::fs::read(stranger.revoke(&[], 2)).expect("list"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&crl_file, &both).expect("write");
        server.refresh();
        assert_reloaded(&mut reloads).await;
        connect_with(port, leaked_cert.clone(), leaked_key.clone(), ca.ca_file())
            .await
            .expect_err("still revoked beside another CA's list");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&crl_file, &kept_list).expect("write");
        server.refresh();
        assert_reloaded(&mut reloads).await;

        // The CA replaced without its list: the list in force was of a CA
        // that is gone, so the reload is taken, and the list applies to
        // nothing the new CA admits.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let new_dir = tempfile::tempdir().expect("dir");
        let new_ca = TestCa::new(new_dir.path(), "new CA");
        let (new_cert, new_key, _) = new_ca.leaf("server");
        std::fs::copy(&new_cert, dir.path().join("server.crt")).expect("copy");
        std::fs::copy(&new_key, dir.path().join("server.key")).expect("copy");
        std::fs::copy(new_ca.ca_file(), ca.ca_file()).expect("copy");
        server.refresh();
        assert_reloaded(&mut reloads).await;
        connect_with(port, new_cert, new_key, new_ca.ca_file())
            .await
            .expect("the new CA's certificates are admitted");
        let rest = closed_by_server(&mut kept).await;
        assert!(rest.is_empty(), "the old CA's connection is closed");
    }

    #[test]
    fn revocation_lists_that_cannot_apply_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new(dir.path(), "CA");
        let (cert, key, own) = ca.leaf("node");
        let load = |crl: PathBuf| {
            Material::load(
                TlsPaths {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: Some(ca.ca_file()),
                    crl: Some(crl),
                },
                ClientAuth::Required,
            )
            .expect_err("refused")
            .to_string()
        };
        let err = load(ca.revoke(&[&own], 1));
        assert!(err.contains("revokes this node's own certificate"), "{err}");

        let other_dir = tempfile::tempdir().expect("dir");
        let stranger = TestCa::new(other_dir.path(), "another CA");
        let err = load(stranger.revoke(&[], 1));
        assert!(err.contains("no revocation list of the CAs in"), "{err}");
        // Same name, another key: the list's signature does not verify.
        let namesake = TestCa::new(other_dir.path(), "CA");
        let err = load(namesake.revoke(&[], 1));
        assert!(err.contains("does not verify"), "{err}");
        // Two lists of one CA: only the first would be used.
        let older = std::fs::read(ca.revoke(&[], 1)).expect("list");
        let mut two = older.clone();
        two.extend(std::fs::read(ca.revoke(&[&own], 2)).expect("list"));
        let two_lists = dir.path().join("two.crl");
        std::fs::write(&two_lists, two).expect("write");
        let err = load(two_lists);
        assert!(err.contains("two revocation lists"), "{err}");

        // Two CAs of one name in the bundle: the list of one would refuse
        // every certificate of the other.
        let bundle = format!(
            "{}{}",
            std::fs::read_to_string(ca.ca_file()).expect("CA"),
            std::fs::read_to_string(namesake.ca_file()).expect("CA")
        );
        let list = ca.revoke(&[], 2);
        std::fs::write(ca.ca_file(), bundle).expect("bundle");
        let err = load(list);
        assert!(err.contains("more than one CA"), "{err}");
        std::fs::write(
            ca.ca_file(),
            issue::new_ca("unused", std::time::Duration::from_secs(60))
                .expect("CA")
                .cert_pem,
        )
        .expect("CA");
        let err = load(ca.ca_file());
        assert!(err.contains("no PEM certificate revocation list"), "{err}");
        let err = load(dir.path().join("missing.crl"));
        assert!(err.contains("missing.crl"), "{err}");
    }

    #[test]
    fn the_list_of_any_ca_of_the_bundle_is_checked_against_that_cas_key_at_load() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new(dir.path(), "CA");
        let (cert, key, _) = ca.leaf("node");
        let second_dir = tempfile::tempdir().expect("dir");
        let second = TestCa::new(second_dir.path(), "second CA");
        let impostor_dir = tempfile::tempdir().expect("dir");
        let impostor = TestCa::new(impostor_dir.path(), "second CA");
        let bundle = dir.path().join("bundle.crt");
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        std::fs::write(&bundle, read(ca.ca_file()) + &read(second.ca_file())).expect("bundle");
        let lists = dir.path().join("lists.crl");
        let load = |second_list: PathBuf| {
            std::fs::write(&lists, read(ca.revoke(&[], 1)) + &read(second_list)).expect("lists");
            Material::load(
                TlsPaths {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: Some(bundle.clone()),
                    crl: Some(lists.clone()),
                },
                ClientAuth::Required,
            )
        };
        // This node's certificate is not of the second CA, so no handshake
        // of its own would have found the bad list.
        let err = load(impostor.revoke(&[], 1))
            .expect_err("a list the second CA did not sign")
            .to_string();
        assert!(
            err.contains("\"CN=second CA\"") && err.contains("does not verify"),
            "{err}"
        );
        load(second.revoke(&[], 1)).expect("the second CA's own list");
    }

    #[test]
    fn without_crl_numbers_the_older_list_is_the_one_issued_first() {
        let at = |number: Option<u32>, issued: i64| InForce {
            subject: b"CA".to_vec(),
            name: "CN=CA".into(),
            number: number.map(x509_parser::num_bigint::BigUint::from),
            issued,
        };
        let why = at(Some(2), 100)
            .older_than(&at(Some(3), 50))
            .expect("older");
        assert!(why.contains("number 2, older than number 3"), "{why}");
        assert_eq!(
            at(Some(3), 50).older_than(&at(Some(3), 100)),
            None,
            "numbers decide"
        );
        let why = at(None, 100).older_than(&at(Some(3), 200)).expect("older");
        assert!(why.contains("before the one in force"), "{why}");
        assert_eq!(at(None, 200).older_than(&at(None, 200)), None);
    }

    #[tokio::test]
    async fn a_connection_admitted_just_before_a_reload_is_checked_against_it() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new(dir.path(), "CA");
        let (cert, key, _) = ca.leaf("server");
        let (_, _, client_pem) = ca.leaf("client");
        let server = Material::load(
            TlsPaths {
                cert,
                key,
                ca: Some(ca.ca_file()),
                crl: None,
            },
            ClientAuth::Required,
        )
        .expect("server");
        let chain = chain_of(&client_pem);
        let watching = |chain: Vec<CertificateDer<'static>>| {
            tokio::time::timeout(
                std::time::Duration::from_millis(300),
                crate::net::distrusted(Some(server.clone()), Some(chain)),
            )
        };
        assert!(watching(chain.clone()).await.is_err(), "still admitted");
        // The CA replaced after the handshake, before the connection is
        // served: the first check is against the new one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other_dir = tempfile::tempdir().expect("dir");
        let other = TestCa::new(other_dir.path(), "other CA");
        std::fs::copy(other.ca_file(), ca.ca_file()).expect("copy");
        server.refresh();
        assert!(watching(chain).await.is_ok(), "no longer admitted");
    }

    #[test]
    fn a_restart_keeps_the_newest_revocation_list_it_had_in_force() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new(dir.path(), "CA");
        let (cert, key, _) = ca.leaf("server");
        let (_, _, leaked_pem) = ca.leaf("leaked");
        let leaked = chain_of(&leaked_pem);
        let crl = ca.revoke(&[&leaked_pem], 5);
        let paths = TlsPaths {
            cert,
            key,
            ca: Some(ca.ca_file()),
            crl: Some(crl.clone()),
        };
        let record = kept::path_in(&dir.path().join("data"), "peer");
        let load = |paths: &TlsPaths| {
            Material::load_keeping(paths.clone(), ClientAuth::Required, Some(record.clone()))
                .expect("starts")
        };
        let start = |paths: &TlsPaths| {
            let material = load(paths);
            material.keep_in_force();
            material
        };
        // Nothing is written before the node holds its data directory.
        assert!(!load(&paths).admits(&leaked), "revoked");
        assert!(!record.exists(), "kept before the node started");
        assert!(!start(&paths).admits(&leaked), "revoked");
        assert!(record.exists(), "the list in force is kept");

        // An older list, from before the revocation, put back while the
        // node was down: the kept one stands in for it. Without a record
        // the node would take it, which is what this guards against.
        let older = std::fs::read(ca.revoke(&[], 4)).expect("list");
        assert!(
            Material::load(paths.clone(), ClientAuth::Required)
                .expect("starts")
                .admits(&leaked),
            "the file alone admits it"
        );
        assert!(
            !start(&paths).admits(&leaked),
            "still revoked after a restart"
        );
        // So does a file that lost this CA's list, beside another CA's.
        let stranger_dir = tempfile::tempdir().expect("dir");
        let stranger = TestCa::new(stranger_dir.path(), "another CA");
        std::fs::copy(stranger.revoke(&[], 9), &crl).expect("copy");
        assert!(!start(&paths).admits(&leaked), "still revoked");
        std::fs::write(&crl, &older).expect("write");

        // A newer list is taken as it is, and kept in turn: one that lifts
        // the revocation (the CA's way of undoing one) holds from then on.
        ca.revoke(&[], 6);
        assert!(start(&paths).admits(&leaked), "lifted by a newer list");
        std::fs::write(&crl, &older).expect("write");
        assert!(start(&paths).admits(&leaked), "number 6 kept, 4 older");
        // A list taken by a reload is kept too.
        let running = start(&paths);
        std::thread::sleep(std::time::Duration::from_millis(20));
        ca.revoke(&[&leaked_pem], 7);
        running.refresh();
        assert!(!running.admits(&leaked), "revoked again by number 7");
        std::fs::write(&crl, &older).expect("write");
        assert!(
            !start(&paths).admits(&leaked),
            "number 7 kept at the reload"
        );

        // A CA replaced under the same name, with another key, takes its
        // kept list's force with it: the node starts on the file's list.
        let renewed_dir = tempfile::tempdir().expect("dir");
        let renewed = TestCa::new(renewed_dir.path(), "CA");
        let (cert, key, _) = renewed.leaf("server");
        let (_, _, other_pem) = renewed.leaf("other");
        let other = chain_of(&other_pem);
        let paths = TlsPaths {
            cert,
            key,
            ca: Some(renewed.ca_file()),
            crl: Some(renewed.revoke(&[], 1)),
        };
        assert!(start(&paths).admits(&other), "the new CA's list, number 1");
        let file_list = std::fs::read(paths.crl.as_ref().expect("crl")).expect("list");
        assert_eq!(
            kept::read(&record),
            CertificateRevocationListDer::pem_slice_iter(&file_list)
                .collect::<Result<Vec<_>, _>>()
                .expect("list"),
            "the new CA's list replaced the old one's"
        );

        // A record that is not PEM is ignored, with a warning.
        std::fs::write(&record, b"-----BEGIN X509 CRL-----\nnot base64\n").expect("write");
        assert!(start(&paths).admits(&other), "starts on the file's list");
    }

    #[test]
    fn a_kept_list_that_revokes_the_certificate_given_is_named_at_start() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new(dir.path(), "CA");
        let (cert, key, _) = ca.leaf("server");
        let (old_cert, old_key, old_pem) = ca.leaf("old");
        let crl = ca.revoke(&[&old_pem], 2);
        let record = kept::path_in(&dir.path().join("data"), "client");
        let paths = TlsPaths {
            cert,
            key,
            ca: Some(ca.ca_file()),
            crl: Some(crl),
        };
        Material::load_keeping(paths.clone(), ClientAuth::Required, Some(record.clone()))
            .expect("starts")
            .keep_in_force();
        // Back on the revoked certificate, beside a list from before it
        // was revoked.
        ca.revoke(&[], 1);
        let rolled_back = TlsPaths {
            cert: old_cert,
            key: old_key,
            ..paths
        };
        let err = Material::load_keeping(rolled_back, ClientAuth::Required, Some(record.clone()))
            .expect_err("its own certificate is revoked");
        let err = err.to_string();
        assert!(err.contains("revokes this node's own certificate"), "{err}");
        assert!(err.contains(&record.display().to_string()), "{err}");
    }

    #[test]
    fn files_touched_or_written_again_unchanged_are_no_reload() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new(dir.path(), "CA");
        let (cert, key, _) = ca.leaf("server");
        let crl = ca.revoke(&[], 1);
        let server = Material::load(
            TlsPaths {
                cert,
                key,
                ca: Some(ca.ca_file()),
                crl: Some(crl.clone()),
            },
            ClientAuth::Required,
        )
        .expect("server");
        let mut reloads = server.reloads();
        let held_stamp = || server.held().stamp.clone();

        // The same bytes written in place, and swapped in as a new file
        // (as a Secret volume does): read again, not a reload.
        for file in [ca.ca_file(), crl.clone()] {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let bytes = std::fs::read(&file).expect("read");
            std::fs::write(&file, &bytes).expect("write");
            server.refresh();
            assert_eq!(held_stamp(), stamp(server.paths()).expect("stamp"));
            let swap = dir.path().join("swap");
            std::fs::write(&swap, &bytes).expect("write");
            std::fs::rename(&swap, &file).expect("rename");
            server.refresh();
            assert_eq!(held_stamp(), stamp(server.paths()).expect("stamp"));
            assert!(!reloads.has_changed().expect("alive"), "not a reload");
        }

        // New contents are.
        std::thread::sleep(std::time::Duration::from_millis(20));
        ca.revoke(&[], 2);
        server.refresh();
        assert!(reloads.has_changed().expect("alive"), "a new list");
        reloads.borrow_and_update();

        // Contents that changed while they were read were not told of
        // (see `current`): reading the same bytes again, settled, is.
        let mut unsettled = load(
            server.paths(),
            &server.provider,
            &server.client_auth,
            None,
            None,
        )
        .expect("load");
        unsettled.announced = false;
        unsettled.stamp = Vec::new();
        *server.current.write().expect("lock") = Arc::new(unsettled);
        server.refresh();
        assert!(reloads.has_changed().expect("alive"), "told once settled");
    }

    #[tokio::test]
    async fn a_tls_client_still_sending_an_oversized_body_reads_the_413() {
        use crate::net::tests::{send_oversized, small_body_app};
        let dir = tempfile::tempdir().expect("dir");
        let material =
            Material::load(files(dir.path(), &["localhost"]), ClientAuth::Off).expect("load");
        // The client port's sockets are read directly, the peer port's
        // through a buffer: both must close the same way.
        for read_buffer in [None, Some(listener::PEER_READ_BUFFER)] {
            let addr = serve_tls(&material, small_body_app(), read_buffer).await;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(
                material.client_config().expect("config"),
            ));
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await.expect("handshake");
            let status = send_oversized(tls).await.expect("an answer, not a reset");
            assert!(
                status.starts_with("HTTP/1.1 413"),
                "{read_buffer:?}: {status}"
            );
        }
    }

    #[tokio::test]
    async fn bodies_larger_than_the_read_buffer_arrive_whole_and_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let material =
            Material::load(files(dir.path(), &["localhost"]), ClientAuth::Off).expect("load");
        // Echoes the body back, so both directions cross the socket wrapper.
        let echo = axum::Router::new().route(
            "/",
            axum::routing::post(|body: axum::body::Bytes| async move { body }),
        );
        // Not a multiple of any buffer or record size, and no byte pattern
        // that a misplaced or repeated piece would leave intact.
        let body: Vec<u8> = (0..(5 * listener::PEER_READ_BUFFER + 12_345) as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for read_buffer in [None, Some(listener::PEER_READ_BUFFER), Some(1)] {
            let port = serve_tls(&material, echo.clone(), read_buffer).await.port();
            let client = reqwest::Client::builder()
                .tls_backend_preconfigured(material.client_config().expect("client config"))
                .build()
                .expect("client");
            // Several on one connection: what a buffer holds of one request
            // belongs to the next.
            for _ in 0..3 {
                let back = client
                    .post(format!("https://localhost:{port}/"))
                    .body(body.clone())
                    .send()
                    .await
                    .expect("answer")
                    .bytes()
                    .await
                    .expect("body");
                assert!(back[..] == body[..], "{read_buffer:?}: the echo differs");
            }
        }
    }

    #[test]
    fn aes_128_gcm_comes_first_and_every_default_suite_stays() {
        use rustls::CipherSuite as S;
        let suites = provider().cipher_suites.clone();
        let ours: Vec<_> = suites.iter().map(|s| s.suite()).collect();
        let mut theirs: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], S::TLS13_AES_128_GCM_SHA256);
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        theirs.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, theirs, "a suite was added or lost");
        // Within TLS 1.2 too, AES-128-GCM before AES-256-GCM, and every
        // TLS 1.3 suite before every TLS 1.2 one.
        let pos = |s| ours.iter().position(|x| *x == s).expect("offered");
        assert!(
            pos(S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
                < pos(S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        );
        let is_tls13 =
            |s: &rustls::SupportedCipherSuite| matches!(s, rustls::SupportedCipherSuite::Tls13(_));
        let tls13 = suites.iter().filter(|s| is_tls13(s)).count();
        assert!(tls13 > 0);
        assert!(suites[..tls13].iter().all(is_tls13), "{ours:?}");
    }

    /// The suite a handshake with `client` settles on.
    async fn negotiated(client: ClientConfig, addr: std::net::SocketAddr) -> rustls::CipherSuite {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let tls = connector.connect(name, tcp).await.expect("handshake");
        tls.get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("a suite")
            .suite()
    }

    #[tokio::test]
    async fn peers_agree_on_aes_128_gcm_and_other_clients_keep_their_choice() {
        let dir = tempfile::tempdir().expect("dir");
        let material =
            Material::load(files(dir.path(), &["localhost"]), ClientAuth::Required).expect("load");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let addr = serve_tls(&material, app, None).await;

        let ours = material.client_config().expect("config");
        assert_eq!(
            negotiated(ours, addr).await,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );

        // A client with rustls' own order (AES-256-GCM first) gets it.
        let mut roots = RootCertStore::empty();
        let ca_file = material.paths().ca.clone().expect("ca");
        let ca_pem = std::fs::read(&ca_file).expect("ca");
        for ca in read_certs(&ca_file, &ca_pem).expect("ca") {
            roots.add(ca).expect("root");
        }
        let theirs = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_file_iter(&material.paths().cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert"),
            PrivateKeyDer::from_pem_file(&material.paths().key).expect("key"),
        )
        .expect("client auth");
        assert_eq!(
            negotiated(theirs, addr).await,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
    }

    #[test]
    fn a_key_that_does_not_go_with_the_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let paths = files(dir.path(), &["localhost"]);
        std::fs::write(
            &paths.key,
            KeyPair::generate().expect("key").serialize_pem(),
        )
        .expect("write");
        let e = Material::load(paths, ClientAuth::Off).expect_err("mismatched pair");
        assert!(e.to_string().contains("tls.key"), "{e}");
        assert!(e.to_string().contains("does not go with"), "{e}");
        assert!(e.to_string().contains("key of another certificate"), "{e}");
    }
}
