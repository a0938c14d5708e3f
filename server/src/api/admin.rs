//! Administration: `GET /v1/admin/snapshot`, a consistent backup of the
//! state machine, streamed.
//!
//! The body is a backup file ([`crate::storage::backup_file`]): a header,
//! the store image in frames as the node encodes it piece by piece, and a
//! checksum. Memory on the node stays bounded whatever the store's size:
//! only a few pieces are ever queued. Errors known before the first byte
//! (a wrong token, no master) are ordinary JSON errors; one later (the
//! snapshot was abandoned) ends the body before its checksum, which the
//! client sees as a truncated file.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream;

use crate::api::cluster::ClusterAuth;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::service::{BackupStream, Service};
use crate::storage::backup_file::{Encoder, FORMAT_VERSION, Header};

/// The `/v1/admin` routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new().route("/v1/admin/snapshot", get(snapshot::<S>))
}

/// A consistent snapshot of the whole store, for `phxkv backup save`.
///
/// It reflects every write acknowledged before the request (it is taken at
/// or after a linearizable read's index) and is streamed as it is encoded
/// while writes go on. The body is a phxkv backup file: magic
/// `PHXBKUP\n`, format version (u32 LE), header length (u32 LE), the JSON
/// header (`format_version`, `cluster_id`, `revision`, `index`,
/// `created_at` in Unix seconds), data frames (u32 LE length, bytes), an empty frame and an
/// xxh3-64 checksum (u64 LE) of everything before it. A body without its
/// checksum was cut short and must not be used.
#[utoipa::path(
    get,
    path = "/v1/admin/snapshot",
    tag = "admin",
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The backup file, streamed.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 503, description = "No master to confirm the read (`unavailable`).", body = ErrorResponse),
    )
)]
pub async fn snapshot<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
) -> Result<Response, ApiError> {
    let backup = svc.backup().await?;
    let header = Header {
        format_version: FORMAT_VERSION,
        cluster_id: backup.cluster_id.clone(),
        revision: backup.revision,
        index: backup.index,
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let (encoder, head) = Encoder::start(&header).map_err(ApiError::internal)?;
    let disposition = format!(
        "attachment; filename=\"phxkv-{}-{}.backup\"",
        header.cluster_id.replace(['"', '\\'], "_"),
        header.revision
    );
    let body = Body::from_stream(frames(head, encoder, backup));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// The body: the head, each piece framed, then the end and the checksum
/// once the image is complete; an error ends it at once, without one.
fn frames(
    head: Vec<u8>,
    encoder: Encoder,
    backup: BackupStream,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let first = stream::iter([Ok(Bytes::from(head))]);
    let rest = stream::unfold(Some((encoder, backup.pieces)), |state| async move {
        let (mut encoder, mut pieces) = state?;
        match pieces.recv().await {
            Some(Ok(Some(piece))) => {
                let out = encoder.data(&piece);
                Some((Ok(Bytes::from(out)), Some((encoder, pieces))))
            }
            Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), None)),
            Some(Ok(None)) => Some((Ok(Bytes::from(encoder.finish())), None)),
            None => Some((Err(std::io::Error::other("the snapshot ended early")), None)),
        }
    });
    futures_util::StreamExt::chain(first, rest)
}
