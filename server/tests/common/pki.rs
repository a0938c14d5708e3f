//! Test certificates: certificate authorities and the certificates they
//! sign, as PEM files for `phxkv serve --tls-*` and clients.

use std::path::{Path, PathBuf};

use phxkv::tls::issue::{self, Issued};

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A certificate authority (made as the operator makes a cluster's).
pub struct Ca {
    ca: Issued,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// The files of one TLS identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        Ca {
            ca: issue::new_ca(name, 365 * DAY).expect("CA certificate"),
        }
    }

    pub fn cert_pem(&self) -> String {
        self.ca.cert_pem.clone()
    }

    /// A certificate for `names` (host names or IP addresses), good for
    /// both ends of a connection, as peers need.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf = issue::issue(&self.ca, common_name, &names, 30 * DAY).expect("leaf certificate");
        Leaf {
            cert: leaf.cert_pem,
            key: leaf.key_pem,
        }
    }

    /// A certificate for `names` whose extended key usage lists only
    /// `usages` (`serverAuth`, `clientAuth`): one made for another job.
    pub fn issue_with_usages(&self, common_name: &str, names: &[&str], usages: &[&str]) -> Leaf {
        use rcgen::ExtendedKeyUsagePurpose as Purpose;
        let ca_key = rcgen::KeyPair::from_pem(&self.ca.key_pem).expect("CA key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key).expect("issuer");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = usages
            .iter()
            .map(|u| match *u {
                "serverAuth" => Purpose::ServerAuth,
                "clientAuth" => Purpose::ClientAuth,
                other => panic!("no such usage in these tests: {other}"),
            })
            .collect();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A revocation list (PEM) of this CA naming `revoked`, numbered
    /// `number`.
    pub fn revocation_list(&self, revoked: &[&Leaf], number: u64) -> String {
        let pems: Vec<&str> = revoked.iter().map(|l| l.cert.as_str()).collect();
        issue::revocation_list(&self.ca, &pems, number, 30 * DAY).expect("revocation list")
    }

    /// Writes `leaf` and this CA into `dir` as `<stem>.crt`, `<stem>.key`
    /// and `<stem>-ca.crt`.
    pub fn write(&self, dir: &Path, stem: &str, leaf: &Leaf) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            ca: dir.join(format!("{stem}-ca.crt")),
        };
        std::fs::write(&files.cert, &leaf.cert).expect("write cert");
        std::fs::write(&files.key, &leaf.key).expect("write key");
        std::fs::write(&files.ca, self.cert_pem()).expect("write CA");
        files
    }
}

/// Replaces `path` by `contents` the way a Secret volume or cert-manager
/// does: write a new file, rename it over the old one.
pub fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write new file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// An HTTP client that trusts `ca` and, if given, presents `leaf`.
pub fn client(ca: &Ca, leaf: Option<&Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("CA")])
        .tls_info(true);
    if let Some(leaf) = leaf {
        let pem = format!("{}\n{}", leaf.cert, leaf.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}
