//! Where an archive lives: `s3://bucket/prefix` on S3 or an S3-compatible
//! server, or `file:///dir` on a file system (a mounted volume, or tests).
//!
//! S3 credentials, region and endpoint come from the environment, as the
//! AWS tools read them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`), or from a file
//! of `NAME=value` lines with the same names (`--archive-credentials-file`)
//! whose values win. Never from flags: those show up in process listings.
//! An `http://` endpoint is allowed (S3-compatible servers inside a
//! cluster); requests are then unencrypted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;

/// An object store's error as one line a person can act on: an S3 error
/// reply's XML becomes its code and message, line breaks go, and a failed
/// call to the instance metadata service (where the S3 client looks for
/// credentials when the environment has none) says that no credentials
/// were given.
pub fn tidy_error(message: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = message.find(&open)? + open.len();
        let len = message[start..].find(&format!("</{name}>"))?;
        Some(message[start..start + len].trim().to_string())
    };
    let mut out = match (
        message.find("<?xml").or_else(|| message.find("<Error>")),
        tag("Code"),
    ) {
        (Some(at), Some(code)) => {
            let said = tag("Message").map(|m| format!(": {m}")).unwrap_or_default();
            format!("{}S3 error {code}{said}", &message[..at])
        }
        _ => message.to_string(),
    };
    if out.contains("169.254.169.254") {
        out = format!(
            "no S3 credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
             environment, or give --archive-credentials-file (the S3 client then asked the \
             instance metadata service, which refused: {})",
            out.rsplit(": ").next().unwrap_or_default().trim()
        );
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An archive location, opened.
#[derive(Clone)]
pub struct Location {
    /// The URL as given (for messages and status).
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    /// The prefix every object of the archive is under.
    pub prefix: ObjectPath,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Location {
    /// Opens `url`; `credentials` is a file of `NAME=value` lines.
    pub fn open(url: &str, credentials: Option<&Path>) -> Result<Location, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 {
                return Err(format!(
                    "archive URL {url}: the bucket name must have at least 3 characters"
                ));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let mut endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            if let Some(file) = credentials {
                for (key, value) in read_credentials(file)? {
                    if key == "AWS_ENDPOINT_URL" {
                        endpoint = Some(value.clone());
                    }
                    let config: AmazonS3ConfigKey = key
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|_| format!("{}: {key} is not an S3 setting", file.display()))?;
                    builder = builder.with_config(config, value);
                }
            }
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(&endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            let store = builder
                .build()
                .map_err(|e| format!("archive URL {url}: {e}"))?;
            Ok(Location {
                url: url.to_string(),
                store: Arc::new(store),
                prefix: object_prefix(url, prefix)?,
            })
        } else if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(format!(
                    "archive URL {url}: a file URL needs an absolute path (file:///dir)"
                ));
            }
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("archive directory {}: {e}", dir.display()))?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| format!("archive directory {}: {e}", dir.display()))?;
            Ok(Location {
                url: url.to_string(),
                store: Arc::new(store),
                prefix: ObjectPath::default(),
            })
        } else {
            Err(format!(
                "archive URL {url}: expected s3://bucket/prefix or file:///absolute/dir"
            ))
        }
    }

    /// The path of `name` (e.g. `base/…`) in the archive.
    pub fn path(&self, name: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in name.split('/') {
            p = p.join(part);
        }
        p
    }

    /// Whether listings come in key order, so that a listing can stop
    /// early: an S3 bucket's do; a directory bucket's (`--x-s3`) and a file
    /// system's do not.
    pub fn lists_in_order(&self) -> bool {
        self.url
            .strip_prefix("s3://")
            .and_then(|rest| rest.split('/').next())
            .is_some_and(|bucket| !bucket.ends_with("--x-s3"))
    }

    /// Deletes the objects `keys` names, in bulk (S3 takes up to 1,000 a
    /// request, where one request each could not keep up with a busy
    /// cluster's segments). An object already gone counts as deleted:
    /// another replica's deletion may have got there first.
    pub async fn delete_all(&self, keys: &[String]) -> Result<(), String> {
        use futures_util::StreamExt as _;
        let paths: Vec<object_store::Result<ObjectPath>> =
            keys.iter().map(|k| Ok(self.path(k))).collect();
        let mut deleted = self
            .store
            .delete_stream(futures_util::stream::iter(paths).boxed());
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(format!("deleting from {}: {e}", self.url)),
            }
        }
        Ok(())
    }
}

fn object_prefix(url: &str, prefix: &str) -> Result<ObjectPath, String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(ObjectPath::default());
    }
    ObjectPath::parse(trimmed).map_err(|e| format!("archive URL {url}: {e}"))
}

/// `NAME=value` lines; blank lines and `#` comments skipped. Only `AWS_*`
/// names are accepted, so a wrong file is noticed.
fn read_credentials(file: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("archive credentials {}: {e}", file.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "archive credentials {} line {}: expected NAME=value",
                file.display(),
                n + 1
            ));
        };
        let key = key.trim().trim_start_matches("export ").trim();
        if !key.starts_with("AWS_") {
            return Err(format!(
                "archive credentials {} line {}: {key} is not an AWS_* setting",
                file.display(),
                n + 1
            ));
        }
        let value = value.trim().trim_matches('"').trim_matches('\'');
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_other_than_s3_and_absolute_files_are_refused() {
        for bad in [
            "http://x/y",
            "file://relative",
            "s3://ab/prefix",
            "bucket/x",
        ] {
            let err = Location::open(bad, None).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn a_file_location_is_created_and_paths_nest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/archive", dir.path().display());
        let loc = Location::open(&url, None).expect("open");
        assert!(dir.path().join("archive").is_dir());
        assert_eq!(loc.path("wal/x.seg").as_ref(), "wal/x.seg");
    }

    #[tokio::test]
    async fn an_https_endpoint_that_does_not_answer_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("creds");
        std::fs::write(
            &creds,
            "AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\nAWS_REGION=us-east-1\n\
             AWS_ENDPOINT_URL=https://127.0.0.1:1\n",
        )
        .expect("write");
        let loc = Location::open("s3://bucket/p", Some(&creds)).expect("open");
        let err = crate::archive::Catalog::list(&loc)
            .await
            .expect_err("nothing listens there");
        assert!(err.contains("s3://bucket/p"), "{err}");
    }

    #[test]
    fn credentials_files_take_aws_names_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good");
        std::fs::write(
            &good,
            "# comment\nAWS_ACCESS_KEY_ID=abc\nexport AWS_SECRET_ACCESS_KEY=\"d e\"\n\n",
        )
        .expect("write");
        assert_eq!(
            read_credentials(&good).expect("read"),
            vec![
                ("AWS_ACCESS_KEY_ID".to_string(), "abc".to_string()),
                ("AWS_SECRET_ACCESS_KEY".to_string(), "d e".to_string())
            ]
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "PASSWORD=x\n").expect("write");
        assert!(read_credentials(&bad).expect_err("bad").contains("line 1"));
    }

    #[test]
    fn s3_errors_read_as_one_line_with_their_code() {
        let raw = "listing archive s3://b/p: Generic S3 error: Error performing GET http://h/b in 3ms \
                   - Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\" \
                   encoding=\"utf-8\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified \
                   bucket does not exist</Message><BucketName>b</BucketName></Error>";
        let tidy = tidy_error(raw);
        assert!(!tidy.contains('\n') && !tidy.contains('<'), "{tidy}");
        assert!(
            tidy.ends_with(
                "404 Not Found: S3 error NoSuchBucket: The specified bucket does not exist"
            ),
            "{tidy}"
        );
        let metadata = tidy_error(
            "listing archive s3://b/p: Generic S3 error: Error performing PUT \
             http://169.254.169.254/latest/api/token in 1ms - Server returned non-2xx status \
             code: 403 Forbidden: resolve_deny: denied destination",
        );
        assert!(
            metadata.starts_with("no S3 credentials were found"),
            "{metadata}"
        );
        assert!(metadata.contains("AWS_ACCESS_KEY_ID"), "{metadata}");
        assert_eq!(tidy_error("a plain\nerror"), "a plain error");
    }
}
