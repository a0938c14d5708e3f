//! Administration: `GET /v1/admin/snapshot`, a consistent backup of the
//! state machine, streamed; and `/v1/admin/backups`, base snapshots in the
//! node's archive (see [`crate::archive`]).
//!
//! The body is a backup file ([`crate::storage::backup_file`]): a header,
//! the store image in frames as the node encodes it piece by piece, and a
//! checksum. Memory on the node stays bounded whatever the store's size:
//! only a few pieces are ever queued. Errors known before the first byte
//! (a wrong token, no master) are ordinary JSON errors; one later (the
//! snapshot was abandoned) ends the body before its checksum, which the
//! client sees as a truncated file.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use futures_util::stream;

use crate::api::cluster::ClusterAuth;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::service::{BackupList, BackupStream, Service};
use crate::archive::Base;
use crate::storage::backup_file::{Encoder, FORMAT_VERSION, Header};

/// The `/v1/admin` routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new()
        .route("/v1/admin/snapshot", get(snapshot::<S>))
        .route(
            "/v1/admin/backups",
            get(list_backups::<S>).post(create_backup::<S>),
        )
        .route("/v1/admin/backups/{name}", delete(delete_backup::<S>))
}

/// Takes a consistent base snapshot (as `GET /v1/admin/snapshot` does) and
/// uploads it to this node's archive; answers once it is stored. It holds
/// every write acknowledged before the request. May take minutes for a
/// large store.
#[utoipa::path(
    post,
    path = "/v1/admin/backups",
    tag = "admin",
    security(("cluster_token" = [])),
    responses(
        (status = 201, description = "The backup is in the archive.", body = Base),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 412, description = "The node has no archive (`no_archive`): start it with `--archive-url`.", body = ErrorResponse),
        (status = 503, description = "No master to confirm the read, or the archive cannot be written (`unavailable`).", body = ErrorResponse),
    )
)]
pub async fn create_backup<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
) -> Result<(StatusCode, Json<Base>), ApiError> {
    Ok((StatusCode::CREATED, Json(svc.archive_backup().await?)))
}

/// The base snapshots in this node's archive, the points a restore can
/// reach, and how far the archive is behind.
#[utoipa::path(
    get,
    path = "/v1/admin/backups",
    tag = "admin",
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The archive's backups.", body = BackupList),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 412, description = "The node has no archive (`no_archive`).", body = ErrorResponse),
        (status = 503, description = "The archive cannot be listed (`unavailable`).", body = ErrorResponse),
    )
)]
pub async fn list_backups<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
) -> Result<Json<BackupList>, ApiError> {
    Ok(Json(svc.archive_list().await?))
}

/// Deletes a base snapshot from the archive, and the log segments that no
/// remaining base needs (those before the oldest one left).
#[utoipa::path(
    delete,
    path = "/v1/admin/backups/{name}",
    tag = "admin",
    security(("cluster_token" = [])),
    params(("name" = String, Path, description = "The backup's name, as listed.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 404, description = "No backup has this name (`backup_not_found`).", body = ErrorResponse),
        (status = 409, description = "The archive's newest backup, which every point archived since it needs (`conflict`); take a new one first.", body = ErrorResponse),
        (status = 412, description = "The node has no archive (`no_archive`).", body = ErrorResponse),
        (status = 503, description = "The archive cannot be written (`unavailable`).", body = ErrorResponse),
    )
)]
pub async fn delete_backup<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    svc.archive_delete(name).await?;
    Ok(StatusCode::NO_CONTENT)
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
        (status = 200, description = "The backup file, streamed.", content_type = "application/octet-stream", body = crate::api::kv::RawValue),
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
