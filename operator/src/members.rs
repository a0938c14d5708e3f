//! Talking to a running cluster: what each replica reports (`/v1/cluster`,
//! `/readyz`) and the membership changes the orchestration decides
//! (`/v1/cluster/members...`, which need the cluster token). Used the same
//! way by the controller and by the tests that drive real `phxkv` processes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use phxkv::api::service::{ClusterInfo, MemberRole, NodeStatus, ReplaceReport};
use serde::Deserialize;

use crate::plan::{MemberView, Observed, PodView, Step};
use crate::render::Names;

/// How long one call to a replica may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Membership changes wait for a commit (and a handoff when the master is
/// removed), so they get longer.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// A base backup is taken and uploaded before the answer: minutes for a
/// large store.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Listing and deleting bases in the archive.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    /// The replica did not answer.
    #[error("{url}: {source}")]
    Unreachable {
        /// Where the call went.
        url: String,
        /// What went wrong.
        source: reqwest::Error,
    },
    /// The replica answered with an error.
    #[error("{url}: HTTP {status}: {message}")]
    Refused {
        /// Where the call went.
        url: String,
        /// Status code.
        status: u16,
        /// The server's machine-readable code (`member_not_found`,
        /// `member_not_ready`, ...); empty when the answer was not an API
        /// error.
        code: String,
        /// The server's message.
        message: String,
    },
    /// No replica answered at all.
    #[error("no replica answered")]
    NoReplica,
}

/// What one replica said about itself and the cluster.
#[derive(Clone, Debug)]
pub struct Report {
    /// The replica (pod) name.
    pub pod: String,
    /// `/v1/cluster` as that replica answered it.
    pub info: ClusterInfo,
}

/// The cluster as the operator assembles it from every replica's report.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The master, if any replica knows one.
    pub master: Option<String>,
    /// Members as the best-informed replica (the master, if it answered)
    /// reports them.
    pub members: Vec<MemberView>,
    /// Each replica's own applied index.
    pub applied: BTreeMap<String, u64>,
    /// Replicas that answered, with their client URL.
    pub answered: Vec<(String, String)>,
    /// Replicas that say they came back with an empty volume and wait to
    /// be replaced, with why.
    pub lost: BTreeMap<String, String>,
}

impl ClusterView {
    /// Where to send a membership change: the master if it answered (any
    /// other replica would forward it there), else any replica that did.
    pub fn via(&self) -> Option<&str> {
        self.answered
            .iter()
            .find(|(pod, _)| Some(pod) == self.master.as_ref())
            .or_else(|| self.answered.first())
            .map(|(_, url)| url.as_str())
    }

    /// What the planner decides from: this view plus the StatefulSet's size
    /// and pods, for a cluster whose pods are named by `names`.
    pub fn observed(
        &self,
        names: &Names,
        desired: i32,
        set_replicas: i32,
        pods: Vec<PodView>,
    ) -> Observed {
        Observed {
            desired,
            set_replicas,
            pods,
            master: self.master.clone(),
            members: self.members.clone(),
            ordinals: self
                .members
                .iter()
                .filter_map(|m| names.ordinal(&m.name).map(|i| (m.name.clone(), i)))
                .collect(),
            lost: self.lost.keys().cloned().collect(),
            failing: Vec::new(),
        }
    }
}

/// A small HTTP client for the cluster API of one cluster.
#[derive(Clone, Debug)]
pub struct MembersClient {
    http: reqwest::Client,
    token: String,
}

/// The server's error: `{"error": {"code", "message"}}`, or the same
/// fields at the top level.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorBody {
    Wrapped { error: ErrorDetail },
    Flat(ErrorDetail),
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    message: String,
}

/// A base backup in a cluster's archive, as the server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ArchivedBase {
    /// Its name in the archive.
    pub name: String,
    /// The store's revision it holds.
    pub revision: u64,
    /// The log index it holds.
    pub index: u64,
    /// When it was taken, in Unix seconds.
    pub created_at: i64,
    /// Its size.
    #[serde(default)]
    pub bytes: u64,
}

/// A point the archive can recover to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ArchivePoint {
    /// The store's revision.
    pub revision: u64,
    /// The log index.
    pub index: u64,
    /// When it was committed, in Unix seconds.
    pub time: i64,
}

/// The range of points the archive can recover to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Recoverable {
    /// The oldest.
    pub first: ArchivePoint,
    /// The newest.
    pub last: ArchivePoint,
}

/// `GET /v1/admin/backups`: the archive as the master sees it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ArchiveListing {
    /// Where it is.
    pub archive_url: String,
    /// Its bases, oldest first.
    #[serde(default)]
    pub backups: Vec<ArchivedBase>,
    /// What it can recover to; none before the first base.
    #[serde(default)]
    pub recoverable: Option<Recoverable>,
    /// Every stretch it can recover to, oldest first: more than one when
    /// the archive has gaps (older servers do not say: empty).
    #[serde(default)]
    pub recoverable_ranges: Vec<Recoverable>,
    /// The last log index archived.
    #[serde(default)]
    pub archived_index: u64,
    /// Log entries committed and not yet archived; only the master that
    /// ships the log says (absent elsewhere, and while it has not
    /// learned the archive's end).
    #[serde(default)]
    pub archive_lag: Option<u64>,
    /// The archiver's error, when its last round failed (the master only).
    #[serde(default)]
    pub archive_error: Option<String>,
}

impl MembersClient {
    /// A client presenting `token` on membership changes.
    pub fn new(http: reqwest::Client, token: impl Into<String>) -> Self {
        MembersClient {
            http,
            token: token.into(),
        }
    }

    /// Asks every replica (pod name, client URL) for its view, concurrently,
    /// and merges the answers: the master's member list wins.
    pub async fn observe(&self, pods: &[(String, String)]) -> ClusterView {
        let calls = pods.iter().map(|(pod, url)| async move {
            let result = self.cluster_info(url).await;
            (pod.clone(), url.clone(), result)
        });
        let mut view = ClusterView::default();
        let mut best: Option<ClusterInfo> = None;
        for (pod, url, result) in join_all(calls).await {
            match result {
                Ok(info) => {
                    view.applied.insert(pod.clone(), info.applied_index);
                    if info.node_state == NodeStatus::AwaitingReplacement {
                        view.lost.insert(
                            pod.clone(),
                            info.node_state_reason.clone().unwrap_or_default(),
                        );
                    }
                    view.answered.push((pod.clone(), url));
                    let is_master = info.members.iter().any(|m| m.is_master && m.name == pod);
                    let better = match &best {
                        None => true,
                        Some(b) => is_master || (b.master.is_none() && info.master.is_some()),
                    };
                    if better {
                        best = Some(info);
                    }
                }
                Err(e) => tracing::debug!(pod = %pod, error = %e, "replica did not report"),
            }
        }
        if let Some(info) = best {
            view.master = info.master.clone();
            view.members = info
                .members
                .iter()
                .map(|m| MemberView {
                    name: m.name.clone(),
                    voter: m.role == MemberRole::Voter,
                    healthy: m.healthy,
                    id: m.id.clone(),
                })
                .collect();
        }
        view
    }

    /// `GET /v1/cluster` on one replica.
    pub async fn cluster_info(&self, base: &str) -> Result<ClusterInfo, MembersError> {
        let url = format!("{base}/v1/cluster");
        // With auth on (the default), reading the cluster needs a token
        // too; the cluster token is the admin credential.
        let request = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .timeout(CALL_TIMEOUT);
        Self::send(&url, request)
            .await?
            .json()
            .await
            .map_err(|source| MembersError::Unreachable { url, source })
    }

    /// Performs a membership step through the replica at `base` (any member
    /// forwards to the master). Other steps are not for this client.
    pub async fn change(
        &self,
        base: &str,
        step: &Step,
        peer_url: &str,
    ) -> Result<(), MembersError> {
        let request = match step {
            Step::AddLearner(name) => self
                .http
                .post(format!("{base}/v1/cluster/members"))
                .json(&serde_json::json!({"name": name, "peer_url": peer_url})),
            Step::Promote(name) => self
                .http
                .post(format!("{base}/v1/cluster/members/{name}/promote")),
            Step::Remove(name) => self
                .http
                .delete(format!("{base}/v1/cluster/members/{name}")),
            _ => return Ok(()),
        };
        let url = format!("{base}/v1/cluster/members");
        let request = request.bearer_auth(&self.token).timeout(CHANGE_TIMEOUT);
        Self::send(&url, request).await.map(|_| ())
    }

    /// One call of the replacement of `name` through the replica at `base`;
    /// the report says whether it is done or still catching up.
    pub async fn replace(&self, base: &str, name: &str) -> Result<ReplaceReport, MembersError> {
        self.member_action(base, name, "replace").await
    }

    /// Moves mastership to the voter `name` through the replica at `via`
    /// (any member passes it to the master), and returns the cluster as
    /// `name` sees it once it is master. Naming the current master changes
    /// nothing. [`MembersError::Refused`] carries the server's code:
    /// `member_not_found` (404), `member_not_voter` (409, a learner),
    /// `member_not_ready` (409: the master has not heard from it recently,
    /// or it is behind; try again later), `unauthorized` (401),
    /// `unavailable` (503: no master right now) or `timeout` (504: handed
    /// over, but `name` was not master in time; it may still become it).
    pub async fn transfer(&self, via: &str, name: &str) -> Result<ClusterInfo, MembersError> {
        self.member_action(via, name, "transfer").await
    }

    /// `POST <base>/v1/admin/backups`: takes a consistent base backup and
    /// uploads it to the cluster's archive; answers once it is there.
    /// [`MembersError::Refused`] with code `no_archive` (412) when the
    /// replicas have no archive, `unavailable` (503) without a master.
    pub async fn take_backup(&self, base: &str) -> Result<ArchivedBase, MembersError> {
        let url = format!("{base}/v1/admin/backups");
        let request = self
            .http
            .post(&url)
            .json(&serde_json::json!({}))
            .bearer_auth(&self.token)
            .timeout(BACKUP_TIMEOUT);
        Self::send(&url, request)
            .await?
            .json()
            .await
            .map_err(|source| MembersError::Unreachable { url, source })
    }

    /// `GET <base>/v1/admin/backups`: the bases in the archive and what it
    /// can recover to.
    pub async fn list_backups(&self, base: &str) -> Result<ArchiveListing, MembersError> {
        let url = format!("{base}/v1/admin/backups");
        let request = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .timeout(ARCHIVE_TIMEOUT);
        Self::send(&url, request)
            .await?
            .json()
            .await
            .map_err(|source| MembersError::Unreachable { url, source })
    }

    /// `DELETE <base>/v1/admin/backups/<name>`: one already gone is fine.
    pub async fn delete_backup(&self, base: &str, name: &str) -> Result<(), MembersError> {
        let url = format!("{base}/v1/admin/backups/{name}");
        let request = self
            .http
            .delete(&url)
            .bearer_auth(&self.token)
            .timeout(ARCHIVE_TIMEOUT);
        match Self::send(&url, request).await {
            Ok(_) | Err(MembersError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST <base>/v1/cluster/members/<name>/<action>` with the token; the
    /// answer decoded as `T`.
    async fn member_action<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        name: &str,
        action: &str,
    ) -> Result<T, MembersError> {
        let url = format!("{base}/v1/cluster/members/{name}/{action}");
        let request = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .timeout(CHANGE_TIMEOUT);
        Self::send(&url, request)
            .await?
            .json()
            .await
            .map_err(|source| MembersError::Unreachable { url, source })
    }

    /// Sends with the trace context; a non-2xx answer becomes
    /// [`MembersError::Refused`] with the server's message.
    async fn send(
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, MembersError> {
        let response = request
            .headers(trace_headers())
            .send()
            .await
            .map_err(|source| MembersError::Unreachable {
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let (code, message) = match response.json::<ErrorBody>().await {
            Ok(ErrorBody::Wrapped { error: e } | ErrorBody::Flat(e)) => (e.code, e.message),
            Err(_) => (
                String::new(),
                status.canonical_reason().unwrap_or("error").to_string(),
            ),
        };
        Err(MembersError::Refused {
            url: url.to_string(),
            status: status.as_u16(),
            code,
            message,
        })
    }
}

/// The current span's W3C trace context, so a reconcile and the membership
/// change it causes show up as one trace.
fn trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    phxkv::telemetry::inject_context(&mut headers);
    headers
}

#[cfg(test)]
mod tests {
    use axum::Json;
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use phxkv::api::service::{ClusterInfo, MemberInfo, MemberRole, NodeStatus};
    use serde_json::json;

    use super::{MembersClient, MembersError};

    fn info(master: &str) -> ClusterInfo {
        ClusterInfo {
            cluster_id: "c".into(),
            node: master.into(),
            node_id: "00000000000000b1".into(),
            node_state: NodeStatus::Member,
            node_state_reason: None,
            divergence: None,
            master: Some(master.into()),
            lease_remaining_ms: None,
            read_mode: Default::default(),
            revision: 1,
            applied_index: 1,
            commit_index: 1,
            members: vec![MemberInfo {
                name: master.into(),
                id: "00000000000000b1".into(),
                role: MemberRole::Voter,
                peer_url: "http://b:8081".into(),
                is_master: true,
                commit_index: Some(1),
                healthy: true,
                peer_features: None,
            }],
        }
    }

    /// A replica that knows the voter `b` and the learner `c`, and wants
    /// the token `t`.
    async fn replica() -> String {
        let app = axum::Router::new().route(
            "/v1/cluster/members/{name}/transfer",
            post(|headers: HeaderMap, Path(name): Path<String>| async move {
                let error = |status: StatusCode, code: &str| {
                    let body =
                        json!({"error": {"code": code, "message": format!("{code}: {name}")}});
                    (status, Json(body)).into_response()
                };
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t") {
                    return error(StatusCode::UNAUTHORIZED, "unauthorized");
                }
                match name.as_str() {
                    "b" => Json(info("b")).into_response(),
                    "c" => error(StatusCode::CONFLICT, "member_not_voter"),
                    _ => error(StatusCode::NOT_FOUND, "member_not_found"),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn transfer_returns_the_new_masters_view_or_the_servers_code() {
        let via = replica().await;
        let client = MembersClient::new(reqwest::Client::new(), "t");
        let view = client.transfer(&via, "b").await.expect("b becomes master");
        assert_eq!(view.master.as_deref(), Some("b"));
        for (name, status, code) in [
            ("c", 409, "member_not_voter"),
            ("x", 404, "member_not_found"),
        ] {
            match client.transfer(&via, name).await {
                Err(MembersError::Refused {
                    status: s,
                    code: c,
                    message,
                    ..
                }) => {
                    assert_eq!((s, c.as_str()), (status, code), "{message}");
                    assert!(message.contains(name), "{message}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let wrong = MembersClient::new(reqwest::Client::new(), "nope");
        assert!(matches!(
            wrong.transfer(&via, "b").await,
            Err(MembersError::Refused { status: 401, .. })
        ));
    }
}
