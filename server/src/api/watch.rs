//! Change notifications: `GET /v1/watch`, as server-sent events.
//!
//! SSE works through proxies and from a browser's `EventSource`, and its
//! `id:` field carries the revision, so a client that reconnects knows where
//! to resume. Errors that can be known up front (a compacted start revision)
//! are answered as ordinary JSON errors before the stream begins; an error
//! later on ends the stream with an `error` event.

use std::convert::Infallible;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Receiver;
use utoipa::ToSchema;

use crate::api::encoding::KvJson;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::query::QueryParams;
use crate::api::service::{Consistency, Service, ServiceError};
use crate::auth::gate::Caller;
use crate::auth::{Need, is_system_key};
use crate::kv::{Event, EventKind};

/// What happened to the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventType {
    Put,
    Delete,
}

/// The `data` of one watch event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"type": "put", "revision": 9, "key": "Y29uZmlnL2E=",
    "key_utf8": "config/a", "value": "b24=", "value_utf8": "on", "version": 2,
    "create_revision": 5, "mod_revision": 9}))]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: WatchEventType,
    /// The revision of the change; all writes of one transaction share it.
    pub revision: u64,
    /// The key as written. For a delete: an empty value, version and create
    /// revision `0`, and `mod_revision` the revision of the deletion.
    #[serde(flatten)]
    pub kv: KvJson,
}

impl From<&Event> for WatchEvent {
    fn from(event: &Event) -> WatchEvent {
        WatchEvent {
            kind: match event.kind {
                EventKind::Put => WatchEventType::Put,
                EventKind::Delete => WatchEventType::Delete,
            },
            revision: event.revision,
            kv: KvJson::from(&event.kv),
        }
    }
}

/// The `/v1/watch` route.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new().route("/v1/watch", get(watch::<S>))
}

/// Streams changes to keys under a prefix.
///
/// Each event has `event: put` or `event: delete`, `id:` the revision, and
/// `data:` a `WatchEvent` as JSON. Comments are sent as keep-alives. If the
/// node stops the watch (shutdown, or the client fell too far behind), a
/// final `event: error` carries an `ErrorResponse`; resume from the last
/// `id` + 1.
#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "watch",
    params(
        ("prefix" = Option<String>, Query, description = "Only keys starting with these bytes (percent-encoded); all keys when absent."),
        ("start_revision" = Option<u64>, Query, description = "Replay changes from this revision on; default: only changes after the current revision."),
    ),
    responses(
        (status = 200, description = "A `text/event-stream`; each event's data is a `WatchEvent`.", body = WatchEvent, content_type = "text/event-stream"),
        (status = 400, description = "Bad query parameter.", body = ErrorResponse),
        (status = 410, description = "`start_revision` is older than the retained history (`compacted`); re-read and watch from the read's revision + 1.", body = ErrorResponse),
    )
)]
pub async fn watch<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let prefix = query.bytes("prefix").unwrap_or_default();
    let start = query.u64("start_revision")?;
    query.finish()?;
    // A watch on a prefix the caller cannot read is refused, not filtered,
    // by rules that reflect every change chosen before it started. That
    // holds for a caller without a credential too: this replica lets one
    // in while it has not applied an `auth enable`, which may already be
    // chosen; the linearizable read sees it.
    let mut checked = 0;
    if !matches!(caller, Caller::Admin) {
        let (who, p) = (caller.clone(), prefix.clone());
        checked = svc
            .read(Consistency::Linearizable, move |store| {
                who.check(store, Need::ReadPrefix(&p))
                    .map(|()| store.auth_generation())
            })
            .await??;
    }
    let start = match start {
        Some(revision) => revision,
        None => {
            let local = Consistency::Local { min_revision: None };
            svc.read(local, |store| store.revision()).await? + 1
        }
    };
    let mut events = svc.watch(prefix.clone(), start)?;
    // Replayed history is usually queued already; an error at its head
    // (typically a compacted start) is still answerable with a status code.
    let first = match events.try_recv() {
        Ok(Ok(event)) => Some(event),
        Ok(Err(err)) => return Err(err.into()),
        Err(_) => None,
    };
    let recheck = Recheck {
        checked,
        svc,
        caller,
        prefix,
    };
    Ok(Sse::new(event_stream(first, events, recheck))
        .keep_alive(KeepAlive::default())
        .into_response())
}

type Source = Receiver<Result<Event, ServiceError>>;

/// What a token's watch checks again before each event it sends.
#[derive(Clone)]
struct Recheck<S> {
    svc: S,
    caller: Caller,
    prefix: Vec<u8>,
    /// The replica's auth generation when the rights were last checked.
    checked: u64,
}

impl<S: Service> Recheck<S> {
    /// Whether the caller may still read the prefix, checked again if the
    /// replica's rules may have changed since the last check: an auth
    /// change applied, or a snapshot installed (which may carry changes
    /// whose events this stream never sees). The replica has applied every
    /// event it sends, so a revocation ordered before an event is seen
    /// here before that event goes out.
    ///
    /// A watch let in without a credential (auth was off) is checked the
    /// same way, so that it ends once this replica applies an `auth
    /// enable`, whether or not the enable's own event is one the watch
    /// replays: a watch asked to start after it never sees it.
    async fn still_allowed(&mut self) -> Result<(), ApiError> {
        if matches!(self.caller, Caller::Admin) {
            return Ok(());
        }
        let (who, p, checked) = (self.caller.clone(), self.prefix.clone(), self.checked);
        let local = Consistency::Local { min_revision: None };
        self.checked = self
            .svc
            .read(local, move |store| {
                let now = store.auth_generation();
                if now == checked {
                    return Ok(now);
                }
                who.check(store, Need::ReadPrefix(&p)).map(|()| now)
            })
            .await??;
        Ok(())
    }
}

/// SSE events for `first` and then everything `events` delivers, ending
/// after the first error. A token's rights are checked again before each
/// event once the replica's rules may have changed (auth changes also
/// arrive as markers, which are never sent, so an idle watch notices
/// too): the watch ends with a `permission_denied` (or `unauthorized`)
/// error event instead of the first event it may no longer see.
fn event_stream<S: Service>(
    first: Option<Event>,
    events: Source,
    recheck: Recheck<S>,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(
        (first, Some(events), recheck),
        |(mut pending, events, mut recheck)| async move {
            let mut events = events?;
            loop {
                let item = match pending.take() {
                    Some(event) => Ok(event),
                    None => events.recv().await?,
                };
                let event = match item {
                    Ok(event) => event,
                    Err(err) => return Some((Ok(error_event(err.into())), (None, None, recheck))),
                };
                let marker = is_system_key(&event.kv.key);
                if let Err(err) = recheck.still_allowed().await {
                    return Some((Ok(error_event(err)), (None, None, recheck)));
                }
                if marker {
                    continue;
                }
                return Some((Ok(to_sse(&event)), (None, Some(events), recheck)));
            }
        },
    )
}

fn to_sse(event: &Event) -> SseEvent {
    let name = match event.kind {
        EventKind::Put => "put",
        EventKind::Delete => "delete",
    };
    match serde_json::to_string(&WatchEvent::from(event)) {
        Ok(data) => SseEvent::default()
            .event(name)
            .id(event.revision.to_string())
            .data(data),
        Err(e) => error_event(ApiError::internal(format!("event not serializable: {e}"))),
    }
}

fn error_event(err: ApiError) -> SseEvent {
    let body = ErrorResponse {
        error: err.into_detail(),
    };
    let data = serde_json::to_string(&body)
        .unwrap_or_else(|_| r#"{"error":{"code":"internal","message":"watch failed"}}"#.into());
    SseEvent::default().event("error").data(data)
}
