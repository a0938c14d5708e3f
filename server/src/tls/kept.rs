//! Revocation lists kept in the data directory, so that a restart does not
//! lift revocations that a reload would have kept.
//!
//! A running node refuses a list older than the one in force for its CA
//! (see [`super::match_crls`]): a stale copy or a restored backup would
//! admit certificates revoked since. A node that starts has nothing in
//! force yet, so before this module it took whatever its file held, and an
//! older list put back beside a node came into force at its next restart.
//!
//! So every list in force is also written to a file of the data directory
//! (`revocation-lists/<port>.pem`, replaced atomically), and at start a
//! CA's kept list is used instead of the one in the file when the file's
//! is older or missing, with a warning that says so. The node then runs on
//! the newest list it has seen, as if it had not stopped; the file's next
//! list at least as new is taken by the usual reload. A kept list counts
//! only for a CA of the CA file whose key it verifies with, so a CA
//! replaced (even under the same name) takes its kept list's force with
//! it, as a reload would. A lost data directory loses what it kept, like
//! everything else a replica knew.
//!
//! The kept file is a convenience of safety, not a source of truth: one
//! that cannot be read is ignored with a warning, and one that cannot be
//! written leaves the previous one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use super::InForce;

/// Where the lists of a port are kept in `data_dir`; `port` is `client`
/// or `peer`.
pub fn path_in(data_dir: &Path, port: &str) -> PathBuf {
    data_dir
        .join("revocation-lists")
        .join(format!("{port}.pem"))
}

/// The lists kept at `path`: none if there is no such file, or (with a
/// warning) if it cannot be read.
pub(super) fn read(path: &Path) -> Vec<CertificateRevocationListDer<'static>> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(
                kept = %path.display(),
                error = %e,
                "cannot read the revocation lists this node kept; only the file given is used"
            );
            return Vec::new();
        }
    };
    match CertificateRevocationListDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(lists) => lists,
        Err(e) => {
            tracing::warn!(
                kept = %path.display(),
                error = %e,
                "the revocation lists this node kept are not PEM; only the file given is used"
            );
            Vec::new()
        }
    }
}

/// `lists` (read from `file`) with each CA's list replaced by the one in
/// `kept` (read from `record`) where that is newer, or added where `lists`
/// has none of that CA, and whether any was. Only lists of exactly one CA
/// of `cas` that verify with its key are taken from `kept`.
pub(super) fn newest(
    mut lists: Vec<CertificateRevocationListDer<'static>>,
    kept: Vec<CertificateRevocationListDer<'static>>,
    cas: &[CertificateDer<'_>],
    file: &Path,
    record: &Path,
) -> (Vec<CertificateRevocationListDer<'static>>, bool) {
    let mut used = false;
    let cas: Vec<_> = cas
        .iter()
        .filter_map(|ca| x509_parser::parse_x509_certificate(ca).ok())
        .map(|(_, ca)| ca)
        .collect();
    for old in kept {
        let Ok((_, parsed)) = x509_parser::parse_x509_crl(&old) else {
            continue;
        };
        let issuer = parsed.issuer().as_raw();
        let mut of_list = cas.iter().filter(|ca| ca.subject().as_raw() == issuer);
        let (Some(ca), None) = (of_list.next(), of_list.next()) else {
            continue;
        };
        match parsed.verify_signature(ca.public_key()) {
            Ok(()) => {}
            // Signed by another key: a CA replaced under the same name,
            // which takes its list's force with it.
            Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                // Taken unchecked, it could turn out at a handshake to be
                // another key's and refuse every certificate of the CA.
                tracing::warn!(
                    kept = %record.display(),
                    issuer = %parsed.issuer(),
                    "a kept revocation list whose signature algorithm cannot be checked here \
                     is not used; only the file's list of that CA counts"
                );
                continue;
            }
            Err(_) => continue,
        }
        let held = version(&parsed);
        // The file's list of that CA, and its version, in one parse.
        let in_file = lists.iter().enumerate().find_map(|(i, l)| {
            let (_, l) = x509_parser::parse_x509_crl(l).ok()?;
            (l.issuer().as_raw() == issuer).then(|| (i, version(&l)))
        });
        let why = match &in_file {
            None => "the file holds no list of that CA".to_owned(),
            Some((_, theirs)) => {
                let Some(why) = theirs.older_than(&held) else {
                    continue;
                };
                format!("the file's {why}")
            }
        };
        tracing::warn!(
            crl = %file.display(),
            kept = %record.display(),
            issuer = held.name.as_str(),
            "using the revocation list of this CA that this node had in force before it \
             stopped ({why}), until the file holds one at least as new: an older list would \
             admit certificates revoked since. Until then no change to the TLS files is taken, \
             renewed certificates included; to start over from the file's lists, delete the \
             kept file and restart"
        );
        match in_file {
            Some((i, _)) => lists[i] = old,
            None => lists.push(old),
        }
        used = true;
    }
    (lists, used)
}

/// The version of a parsed list (its CA's subject is the list's issuer).
fn version(list: &x509_parser::revocation_list::CertificateRevocationList<'_>) -> InForce {
    InForce {
        subject: list.issuer().as_raw().to_vec(),
        name: list.issuer().to_string(),
        number: list.crl_number().cloned(),
        issued: list.last_update().timestamp(),
    }
}

/// The PEM of those of `lists` that are in force (`enforced`): what
/// [`write`] keeps.
pub(super) fn pem_of(lists: &[CertificateRevocationListDer<'_>], enforced: &[InForce]) -> Vec<u8> {
    let mut out = Vec::new();
    for list in lists {
        let in_force = x509_parser::parse_x509_crl(list).is_ok_and(|(_, l)| {
            enforced
                .iter()
                .any(|e| e.subject.as_slice() == l.issuer().as_raw())
        });
        if in_force {
            let list = pem::Pem::new("X509 CRL", list.as_ref());
            let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
            out.extend_from_slice(pem::encode_config(&list, lf).as_bytes());
        }
    }
    out
}

/// Replaces the file at `path` with `pem`, durably (written aside,
/// synced, renamed, directory synced); nothing is written when it already
/// holds exactly that. A failure is logged and leaves the previous file.
pub(super) fn write(path: &Path, pem: &[u8]) {
    if pem.is_empty() || std::fs::read(path).is_ok_and(|held| held == pem) {
        return;
    }
    if let Err(e) = replace(path, pem) {
        tracing::warn!(
            kept = %path.display(),
            error = %e,
            "cannot keep the revocation lists in force for the next start"
        );
    }
}

fn replace(path: &Path, pem: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        if let Some(data_dir) = dir.parent() {
            std::fs::File::open(data_dir)?.sync_all()?;
        }
    }
    let aside = path.with_extension(format!("pem.{}.new", std::process::id()));
    let mut file = std::fs::File::create(&aside)?;
    file.write_all(pem)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&aside, path)?;
    std::fs::File::open(dir)?.sync_all()
}
