//! Switchover: moving mastership to a named voter on request (an operator
//! draining a node before maintenance, or putting the master where it
//! wants it), through the handoff a master makes on a clean shutdown.
//!
//! The request may arrive at any node. The name is resolved in the
//! configuration the master reports; the handoff itself runs on the master
//! (asked over `POST /peer/v1/transfer` unless it is this node), which first
//! checks that the target can take over at once
//! ([`crate::paxos::Replica::hand_off`]: a voter it heard from recently,
//! not far behind). A target that could not would hold the acceptors'
//! promises for a lease with nobody in charge. Once the handoff lease is
//! chosen the master steps down and cues the target, and the node that took
//! the request waits until the target itself says it is master.
//!
//! Asking for the current master changes nothing. Everything is bounded by
//! the write timeout; a target that has not taken over by then may still,
//! so that answer is a 504 whose message says so.

use std::time::{Duration, Instant};

use crate::api::service::{ClusterInfo, MemberRole, NodeStatus, Service as _, ServiceError};
use crate::cluster::bootstrap;
use crate::paxos::NodeId;

use super::Node;
use super::driver::Input;
use super::wire::{TransferRefusal, TransferReply, TransferRequest};

/// Pause between two rounds of asking and checking.
const POLL: Duration = Duration::from_millis(50);
/// The longest one check of the target's view may take.
const VIEW_TIMEOUT: Duration = Duration::from_secs(1);

impl Node {
    /// Hands mastership to `target` (to the most caught-up voter that can
    /// take over, when `None`) if this node is master, and waits up to
    /// `within` until it is no longer master. The answer says who is master
    /// now as far as this node knows, or why nothing was handed over.
    pub async fn transfer_to(
        &self,
        target: Option<NodeId>,
        within: Duration,
    ) -> Result<TransferReply, ServiceError> {
        let deadline = Instant::now() + within;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.submit(Input::HandOff { target, reply })?;
        let to = match rx.await {
            Ok(Ok(to)) => to,
            Ok(Err(e)) => return Ok(TransferReply::from(e)),
            Err(_) => return Err(ServiceError::Internal("the engine stopped".into())),
        };
        let name = self.member_name(to).unwrap_or_default();
        tracing::info!(to = %name, "handing mastership over");
        self.wait_until(deadline, "hand mastership over", |p| !p.status.is_master)
            .await?;
        let master = self.inner.published.borrow().status.master;
        Ok(TransferReply::HandedOver { master })
    }

    /// Moves mastership to the member `name` and waits until it is master:
    /// the work of `POST /v1/cluster/members/{name}/transfer` on any node.
    pub(super) async fn switch_over(&self, name: &str) -> Result<ClusterInfo, ServiceError> {
        let started = Instant::now();
        let deadline = started + self.inner.cfg.write_timeout;
        // A node still joining (or awaiting replacement) knows no members
        // and no master: "no such member" would be a wrong answer.
        let (state, why) = self.state();
        if state != NodeStatus::Member {
            return Err(ServiceError::Unavailable {
                message: format!(
                    "this node is not a member of its cluster yet ({}); ask another",
                    why.unwrap_or_else(|| "joining".into())
                ),
                retry_after_secs: 1,
            });
        }
        let view = self.cluster().await?;
        let member = view
            .members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ServiceError::UnknownMember(format!("no member is named {name:?}")))?;
        if member.role == MemberRole::Learner {
            return Err(ServiceError::NotVoter(format!(
                "{name} is a learner; only a voter can be master (promote it first)"
            )));
        }
        let target = bootstrap::parse_id(&member.id).map_err(ServiceError::Internal)?;
        // A master that was just elected, or a target that just came back,
        // is reported within a couple of election timeouts: until then a
        // "not ready" refusal is asked again rather than answered.
        let grace = self.inner.cfg.engine.election_timeout * 2;
        let mut not_ready_since: Option<Instant> = None;
        let mut ask = master_in(&view).or_else(|| self.inner.published.borrow().status.master);
        let mut handed_over = false;
        let mut waiting = None;
        while Instant::now() < deadline {
            match ask {
                Some(m) if m == target => {
                    // The target says whether it is master, and if not,
                    // whom it follows (someone to ask, if the handoff
                    // failed and another node was elected).
                    match self.view_of(target, deadline).await {
                        Ok(info)
                            if info.master.as_deref() == Some(name)
                                && info.node_id == bootstrap::format_id(target) =>
                        {
                            if handed_over {
                                tracing::info!(master = %name, "mastership moved on request");
                            }
                            return Ok(self.with_own_state(info));
                        }
                        Ok(info) => {
                            ask = master_in(&info).or(Some(target));
                        }
                        Err(e) => {
                            waiting = Some(format!("{name} does not answer: {e}"));
                            ask = self.inner.published.borrow().status.master;
                        }
                    }
                }
                Some(m) => {
                    let within = deadline.saturating_duration_since(Instant::now());
                    let reply = if m == self.inner.id {
                        self.transfer_to(Some(target), within).await
                    } else {
                        self.call_peer::<_, TransferReply>(
                            m,
                            "/peer/v1/transfer",
                            &TransferRequest { target },
                            deadline,
                        )
                        .await
                        .map_err(|e| ServiceError::Unavailable {
                            message: e,
                            retry_after_secs: 1,
                        })
                    };
                    match reply {
                        Ok(TransferReply::HandedOver { master }) => {
                            handed_over = true;
                            ask = master.or(Some(target));
                        }
                        // `m` is the target after all: check with it.
                        Ok(TransferReply::AlreadyMaster) => ask = Some(target),
                        Ok(TransferReply::NotMaster { hint }) => {
                            ask = hint.or_else(|| self.inner.published.borrow().status.master);
                        }
                        Ok(TransferReply::Refused { reason, message }) => {
                            let message = format!("{name} cannot take over now: {message}");
                            match reason {
                                TransferRefusal::NotMember => {
                                    return Err(ServiceError::UnknownMember(format!(
                                        "no member is named {name:?} (any more)"
                                    )));
                                }
                                TransferRefusal::NotVoter => {
                                    return Err(ServiceError::NotVoter(message));
                                }
                                TransferRefusal::NotReady => {
                                    let since = *not_ready_since.get_or_insert_with(Instant::now);
                                    if since.elapsed() >= grace {
                                        return Err(ServiceError::NotReady(message));
                                    }
                                }
                                TransferRefusal::InProgress => {}
                            }
                            waiting = Some(message);
                        }
                        Err(e) => {
                            waiting = Some(e.to_string());
                            ask = self.inner.published.borrow().status.master;
                        }
                    }
                }
                None => ask = self.inner.published.borrow().status.master,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(POLL.min(left)).await;
        }
        let took = started.elapsed().as_millis();
        if handed_over {
            Err(ServiceError::HandoffTimeout(format!(
                "mastership was handed to {name}, but it was not master {took} ms later; it may \
                 still take over (GET /v1/cluster shows the master)"
            )))
        } else {
            Err(ServiceError::Unavailable {
                message: waiting.unwrap_or_else(|| {
                    format!("no master was available to hand mastership to {name} within {took} ms")
                }),
                retry_after_secs: 1,
            })
        }
    }

    /// The cluster as the member `id` itself sees it.
    async fn view_of(&self, id: NodeId, deadline: Instant) -> Result<ClusterInfo, String> {
        if id == self.inner.id {
            return Ok(self.local_cluster());
        }
        let deadline = deadline.min(Instant::now() + VIEW_TIMEOUT);
        self.call_peer(id, "/peer/v1/cluster", &(), deadline).await
    }
}

/// The id of the master `info` names, if it names one among its members.
fn master_in(info: &ClusterInfo) -> Option<NodeId> {
    let name = info.master.as_deref()?;
    let member = info.members.iter().find(|m| m.name == name)?;
    bootstrap::parse_id(&member.id).ok()
}
