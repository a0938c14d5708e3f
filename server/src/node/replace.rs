//! Replacing a member: the one safe way back for a node whose volume was
//! lost (or that must move to a new one).
//!
//! The old incarnation is removed, the incarnation that now answers at the
//! member's peer URL is added as a learner, and it is promoted once it has
//! caught up. Each step is one membership change through the log, so every
//! rule of `crate::paxos::membership` holds in between: in particular the
//! removal is refused if it would leave fewer reachable voters than a
//! quorum. The operation is idempotent and can resume at any point: where it
//! stands is read from the configuration and from the node itself, never
//! remembered here, so a caller (the CLI, the operator) just calls again.
//!
//! Nothing is replaced that still runs the configuration's incarnation: a
//! healthy member answers with the id the configuration holds, and the call
//! does nothing. A node that cannot be reached is not replaced either: its
//! new incarnation must be known before the old one goes.

use std::time::{Duration, Instant};

use crate::api::service::{
    MemberChange, MemberInfo, MemberRole, ReplaceReport, ReplaceState, Service, ServiceError,
};
use crate::cluster::bootstrap::{self, NodeState};
use crate::paxos::NodeId;

use super::Node;

/// A learner this close to the cluster's commit index counts as caught up.
const CAUGHT_UP_SLACK: u64 = 64;

impl Node {
    /// The incarnation the node at `peer_url` runs, checked to be `name` of
    /// this cluster.
    pub(super) async fn incarnation_at(
        &self,
        name: &str,
        peer_url: &str,
    ) -> Result<NodeId, ServiceError> {
        let hello = self.asked(name, peer_url).await?;
        bootstrap::parse_id(&hello.incarnation).map_err(ServiceError::Internal)
    }

    async fn asked(&self, name: &str, peer_url: &str) -> Result<bootstrap::Hello, ServiceError> {
        let hello = self.hello_of(peer_url).await.map_err(|e| {
            if matches!(e, super::HelloError::TokenRefused) {
                // It runs, but for another cluster token: waiting will not
                // help.
                return ServiceError::Conflict(format!(
                    "{name} at {peer_url} refused this cluster's token: start it with this \
                     cluster's --cluster-token-file"
                ));
            }
            ServiceError::Unavailable {
                message: format!(
                    "cannot ask {name} at {peer_url} which incarnation it runs: {e}; it must be \
                     running (with --join, or with the cluster's member list) first"
                ),
                retry_after_secs: 2,
            }
        })?;
        if hello.cluster_id != self.inner.cfg.cluster_id {
            return Err(ServiceError::Conflict(format!(
                "the node at {peer_url} belongs to cluster {:?}, not {:?}",
                hello.cluster_id, self.inner.cfg.cluster_id
            )));
        }
        if hello.name != name {
            return Err(ServiceError::Conflict(format!(
                "the node at {peer_url} is named {:?}, not {name:?}",
                hello.name
            )));
        }
        Ok(hello)
    }

    /// One call of a replacement; see the module doc.
    pub(super) async fn replace_step(
        &self,
        name: String,
        peer_url: Option<String>,
        learner: bool,
    ) -> Result<ReplaceReport, ServiceError> {
        let info = self.cluster().await?;
        let current = info.members.iter().find(|m| m.name == name).cloned();
        let url = peer_url
            .or_else(|| current.as_ref().map(|m| m.peer_url.clone()))
            .ok_or_else(|| {
                ServiceError::UnknownMember(format!(
                    "no member is named {}; give the new node's peer_url to add it",
                    crate::text::quoted(&name)
                ))
            })?;
        let url = url.trim_end_matches('/').to_string();
        self.check_peer_scheme(&url)?;
        let hello = self.asked(&name, &url).await?;
        let new_id = hello.incarnation.clone();
        let mut removed = None;
        match &current {
            Some(m) if m.id == new_id => {
                if m.role == MemberRole::Voter || learner {
                    return Ok(ReplaceReport {
                        member: name.clone(),
                        removed: None,
                        incarnation: new_id.clone(),
                        state: ReplaceState::Done,
                        message: format!(
                            "{name} runs incarnation {new_id}, which is the member; nothing to \
                             replace"
                        ),
                    });
                }
            }
            Some(m) => {
                if hello.state == NodeState::Member {
                    return Err(ServiceError::Conflict(format!(
                        "{name} at {url} runs incarnation {new_id}, which holds a configuration \
                         of its own; refusing to put it in place of incarnation {}",
                        m.id
                    )));
                }
                self.change_members(MemberChange::RemoveIncarnation {
                    name: name.clone(),
                    id: m.id.clone(),
                })
                .await?;
                tracing::info!(member = %name, old = %m.id, new = %new_id, "replacing a member: old incarnation removed");
                removed = Some(m.id.clone());
                self.change_members(MemberChange::Add {
                    name: name.clone(),
                    peer_url: url.clone(),
                })
                .await?;
            }
            None => {
                self.change_members(MemberChange::Add {
                    name: name.clone(),
                    peer_url: url.clone(),
                })
                .await?;
            }
        }
        if learner {
            return Ok(ReplaceReport {
                member: name.clone(),
                removed,
                incarnation: new_id.clone(),
                state: ReplaceState::Done,
                message: format!("{name} is a learner as incarnation {new_id}"),
            });
        }
        // Wait (a while) for the learner to catch up, then promote it.
        let deadline = Instant::now() + self.inner.cfg.write_timeout;
        loop {
            let info = self.cluster().await?;
            let reference = info
                .members
                .iter()
                .filter_map(|m| m.commit_index)
                .max()
                .unwrap_or(0);
            let at = info
                .members
                .iter()
                .find(|m: &&MemberInfo| m.name == name && m.id == new_id)
                .and_then(|m| m.commit_index)
                .unwrap_or(0);
            if at + CAUGHT_UP_SLACK >= reference {
                self.change_members(MemberChange::Promote { name: name.clone() })
                    .await?;
                tracing::info!(member = %name, incarnation = %new_id, "replacement promoted to voter");
                return Ok(ReplaceReport {
                    member: name.clone(),
                    removed,
                    incarnation: new_id.clone(),
                    state: ReplaceState::Done,
                    message: format!("{name} is a voter again, as incarnation {new_id}"),
                });
            }
            if Instant::now() >= deadline {
                return Ok(ReplaceReport {
                    member: name.clone(),
                    removed,
                    incarnation: new_id.clone(),
                    state: ReplaceState::CatchingUp,
                    message: format!(
                        "{name} (incarnation {new_id}) is a learner catching up: at {at} of \
                         {reference}; call again to promote it once it has"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
