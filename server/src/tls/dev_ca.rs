//! Certificates for `phxkv dev --secure`: a private CA made on the spot and
//! one certificate it signs for every replica (they all listen on
//! loopback), kept in the dev data directory so a restarted dev cluster,
//! and the clients told to trust its CA, keep working.

use std::path::Path;

use std::time::Duration;

use super::{TlsError, TlsPaths, issue};

/// How long the dev CA and certificate last: a dev data directory is not
/// expected to outlive them.
const DEV_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The subject common name of the certificate [`make`] issues (what
/// `--peer-cert-allowed-cn` would admit).
pub const COMMON_NAME: &str = "phxkv dev replica";

/// The names of the dev replicas' certificate: every one listens on
/// loopback.
const DEV_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// The files under `dir`, made first if any is missing: `ca.crt`,
/// `node.crt` (for 127.0.0.1, ::1 and localhost) and `node.key`.
pub fn ensure(dir: &Path) -> Result<TlsPaths, TlsError> {
    let paths = paths_in(dir);
    if paths.files().all(Path::exists) {
        return Ok(paths);
    }
    make(&paths, &DEV_NAMES)?;
    Ok(paths)
}

fn paths_in(dir: &Path) -> TlsPaths {
    TlsPaths {
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
        ca: Some(dir.join("ca.crt")),
        crl: None,
    }
}

/// A new CA and a certificate it signs for `names` (host names or IP
/// addresses, good for both ends of a connection), written to `paths`.
pub(crate) fn make(paths: &TlsPaths, names: &[&str]) -> Result<(), TlsError> {
    let ca = issue::new_ca("phxkv dev CA", DEV_CA_VALIDITY)?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf = issue::issue(&ca, COMMON_NAME, &names, DEV_CA_VALIDITY)?;
    if let Some(dir) = paths.key.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::file(dir, e))?;
    }
    write(&paths.key, &leaf.key_pem, 0o600)?;
    write(&paths.cert, &leaf.cert_pem, 0o644)?;
    if let Some(ca_path) = &paths.ca {
        write(ca_path, &ca.cert_pem, 0o644)?;
    }
    Ok(())
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    write_with_mode(path, contents, mode).map_err(|e| TlsError::file(path, e))
}

/// Writes `contents` to `path`, created (or truncated) with permissions
/// `mode`: 0o600 for a secret, which then is never readable by others,
/// not even for a moment.
pub(crate) fn write_with_mode(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ClientAuth, Material};

    #[test]
    fn dev_certificates_are_made_once_and_load_for_both_ports() {
        let dir = tempfile::tempdir().expect("dir");
        let tls = dir.path().join("tls");
        let paths = ensure(&tls).expect("made");
        let first = std::fs::read(&paths.cert).expect("cert");
        Material::load(paths.clone(), ClientAuth::Required).expect("peer port");
        Material::load(paths.clone(), ClientAuth::Off).expect("client port");
        let again = ensure(&tls).expect("kept");
        assert_eq!(again, paths);
        assert_eq!(
            std::fs::read(&again.cert).expect("cert"),
            first,
            "not remade"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&paths.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
    }
}
