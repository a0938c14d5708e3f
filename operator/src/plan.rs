//! The orchestration, as a pure function: from what the operator observed
//! (the StatefulSet's size, its pods, the Paxos membership as the cluster
//! reports it) to the one next step. The caller performs the step and comes
//! back later; each step is small and safe on its own, so a crash of the
//! operator between steps leaves nothing half done.
//!
//! The rules, in order:
//! 1. Without a master nothing changes: membership changes need a quorum,
//!    and an upgrade must not take a pod from a cluster that is struggling.
//! 2. Scale down first removes members past the new size, learners first,
//!    then voters from the highest ordinal, and only while the remaining
//!    voters keep a healthy majority; the StatefulSet shrinks once no member
//!    is left past the new size. A master being removed hands mastership
//!    over first (the server does that).
//! 3. Scale up grows the StatefulSet (new pods start empty and wait), then
//!    adds one pod at a time as a learner and promotes it once it is ready,
//!    i.e. caught up. One change at a time is what the engine allows.
//! 4. Upgrade (a pod whose template is older than the StatefulSet's)
//!    replaces one pod at a time, only when every member is healthy and
//!    every pod ready, the master last. An outdated pod that is not ready
//!    goes first (after a rollback it is the pod that broke on the bad
//!    template and it never gets ready on its own), as long as the other
//!    voters keep a healthy majority.
//!
//! Self-healing comes next (rule 1): a member that has been unhealthy or
//! lagging for longer than the configured threshold is recreated on a new
//! volume (its pod and claim deleted; the pod then comes back empty and is
//! replaced as below), one at a time, never during another change, and
//! only while the other voters keep a healthy majority.
//!
//! Before scaling or upgrading, a pod that came back with an empty volume
//! (it reports `awaiting_replacement`: the cluster counts another
//! incarnation under its name) is replaced through the membership API, one
//! at a time, and only while the other voters keep a healthy majority
//! without it. Until then it votes nowhere, so it weakens the cluster.

use std::collections::BTreeMap;

/// A pod of the StatefulSet as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name (`<cluster>-<ordinal>`).
    pub name: String,
    /// Its ordinal.
    pub ordinal: i32,
    /// Passes its readiness probe (member, master known, caught up).
    pub ready: bool,
    /// Runs the StatefulSet's current template.
    pub current: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// A member of the Paxos configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Member name (a pod name when the operator added it).
    pub name: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// The master heard from it recently.
    pub healthy: bool,
    /// Its incarnation, as the cluster reports it.
    pub id: String,
}

/// Everything [`plan`] decides from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `spec.replicas`.
    pub desired: i32,
    /// The StatefulSet's `spec.replicas`.
    pub set_replicas: i32,
    /// Pods that exist, by ordinal.
    pub pods: Vec<PodView>,
    /// The master, when one is known.
    pub master: Option<String>,
    /// The configuration as the cluster reports it; empty when no replica
    /// answered.
    pub members: Vec<MemberView>,
    /// Maps a member name to its ordinal (`None` for names that are not
    /// pods of this StatefulSet: those are left alone).
    pub ordinals: BTreeMap<String, i32>,
    /// Pods that report they came back with an empty volume and wait to be
    /// replaced.
    pub lost: Vec<String>,
    /// Members that have been unhealthy or lagging for longer than the
    /// self-healing threshold (see [`failing_for`]), longest first.
    pub failing: Vec<String>,
}

/// The one next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: the cluster matches the spec.
    Idle,
    /// Something must happen first (a pod must become ready, a master be
    /// elected); the reason says what. Check again soon.
    Wait(String),
    /// Set the StatefulSet's replica count.
    SetReplicas(i32),
    /// Add this pod as a learner.
    AddLearner(String),
    /// Make this caught-up learner a voter.
    Promote(String),
    /// Remove this member from the configuration.
    Remove(String),
    /// Delete this pod so the StatefulSet recreates it from the current
    /// template.
    ReplacePod(String),
    /// Replace this member by the new incarnation its pod runs (its volume
    /// was lost): remove, add as a learner, promote once caught up.
    ReplaceMember(String),
    /// Self-healing: this member has been failing past the threshold.
    /// Delete its pod and volume; the StatefulSet brings the pod back on a
    /// new, empty volume (on any node), and [`Step::ReplaceMember`] takes it
    /// from there.
    Recreate(String),
}

impl Step {
    /// Whether the step scales the cluster (as opposed to upgrading it).
    pub fn is_scaling(&self) -> bool {
        matches!(
            self,
            Step::SetReplicas(_)
                | Step::AddLearner(_)
                | Step::Promote(_)
                | Step::Remove(_)
                | Step::ReplaceMember(_)
                | Step::Recreate(_)
        )
    }
}

/// Members failing (unhealthy, or lagging) since at least `threshold`
/// before `now`, given when each was first seen failing; longest first.
pub fn failing_for<T: Ord + Copy>(
    since: &BTreeMap<String, T>,
    now: T,
    threshold: impl Fn(T, T) -> bool,
) -> Vec<String> {
    let mut out: Vec<(&String, T)> = since
        .iter()
        .filter(|(_, t)| threshold(**t, now))
        .map(|(n, t)| (n, *t))
        .collect();
    out.sort_by_key(|(n, t)| (*t, (*n).clone()));
    out.into_iter().map(|(n, _)| n.clone()).collect()
}

fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// Decides the next step. See the module docs for the rules.
pub fn plan(o: &Observed) -> Step {
    if o.master.is_none() {
        return Step::Wait("no master is elected yet".into());
    }
    let ordinal = |name: &str| o.ordinals.get(name).copied();
    let pod = |name: &str| o.pods.iter().find(|p| p.name == name);
    let ours: Vec<(&MemberView, i32)> = o
        .members
        .iter()
        .filter_map(|m| ordinal(&m.name).map(|i| (m, i)))
        .collect();
    let voters = o.members.iter().filter(|m| m.voter).count();
    let healthy_voters = o.members.iter().filter(|m| m.voter && m.healthy).count();

    // 0. Lost volumes: the node votes nowhere until replaced.
    if let Some(lost) = o.lost.first() {
        let member = o.members.iter().find(|m| &m.name == lost);
        let (remaining, remaining_healthy) = match member {
            Some(m) if m.voter => (voters - 1, healthy_voters - usize::from(m.healthy)),
            _ => (voters, healthy_voters),
        };
        if remaining == 0 || remaining_healthy < majority(remaining) {
            return Step::Wait(format!(
                "{lost} lost its volume, but replacing it now would leave {remaining_healthy} \
                 healthy of {remaining} voters; waiting for the others to be healthy"
            ));
        }
        return Step::ReplaceMember(lost.clone());
    }

    // 1. Self-healing: a member failing past the threshold is recreated on
    // a new volume, one at a time: not while a membership change or a pod
    // replacement is under way, and only when the other voters keep a
    // healthy majority without it (it counts when the master still hears
    // from it, as a lagging member is heard).
    let busy = o.members.iter().any(|m| !m.voter) || o.pods.iter().any(|p| p.terminating);
    if let Some(name) = o.failing.iter().find(|n| ordinal(n).is_some()) {
        let member = o.members.iter().find(|m| &m.name == name);
        let counted = member.is_some_and(|m| m.voter && m.healthy);
        let remaining_healthy = healthy_voters - usize::from(counted);
        if busy {
            return Step::Wait(format!(
                "{name} keeps failing; it is recreated once the change under way is done"
            ));
        }
        if voters < 2 || remaining_healthy < majority(voters) {
            return Step::Wait(format!(
                "{name} keeps failing, but recreating it would leave {remaining_healthy} healthy \
                 of {voters} voters; waiting for the others to be healthy"
            ));
        }
        return Step::Recreate(name.clone());
    }

    // 2. Scale down: members past the new size go first.
    let mut extra: Vec<&(&MemberView, i32)> =
        ours.iter().filter(|(_, i)| *i >= o.desired).collect();
    extra.sort_by_key(|(m, i)| (m.voter, std::cmp::Reverse(*i)));
    if let Some((m, _)) = extra.first() {
        if !m.voter {
            return Step::Remove(m.name.clone());
        }
        let remaining = voters - 1;
        let remaining_healthy = healthy_voters - usize::from(m.healthy);
        if remaining == 0 || remaining_healthy < majority(remaining) {
            return Step::Wait(format!(
                "removing {} would leave {remaining_healthy} healthy of {remaining} voters, \
                 not a majority; waiting for the others to be healthy",
                m.name
            ));
        }
        return Step::Remove(m.name.clone());
    }
    if o.set_replicas > o.desired {
        return Step::SetReplicas(o.desired);
    }

    // 3. Scale up: grow the set, then add and promote one pod at a time.
    if o.set_replicas < o.desired {
        return Step::SetReplicas(o.desired);
    }
    if let Some((learner, _)) = ours.iter().find(|(m, _)| !m.voter) {
        return match pod(&learner.name) {
            Some(p) if p.ready && !p.terminating => {
                if healthy_voters + 1 < majority(voters + 1) {
                    Step::Wait(format!(
                        "promoting {} needs {} healthy voters; {healthy_voters} are",
                        learner.name,
                        majority(voters + 1) - 1
                    ))
                } else {
                    Step::Promote(learner.name.clone())
                }
            }
            _ => Step::Wait(format!("learner {} is catching up", learner.name)),
        };
    }
    let missing = (0..o.desired).find(|i| !ours.iter().any(|(_, j)| j == i));
    if let Some(i) = missing {
        return match o.pods.iter().find(|p| p.ordinal == i) {
            Some(p) if !p.terminating => Step::AddLearner(p.name.clone()),
            _ => Step::Wait(format!("pod with ordinal {i} does not exist yet")),
        };
    }

    // 4. Upgrade: one outdated pod at a time, the master last.
    let outdated: Vec<&PodView> = o
        .pods
        .iter()
        .filter(|p| !p.current && p.ordinal < o.desired)
        .collect();
    if outdated.is_empty() {
        return Step::Idle;
    }
    if let Some(p) = o.pods.iter().find(|p| p.terminating) {
        return Step::Wait(format!("waiting for {} to be replaced", p.name));
    }
    // An outdated pod that is not ready gains nothing by waiting: after a
    // rollback it is the broken pod the upgrade stopped at, and only
    // replacing it brings it back. It goes first, if the voters keep a
    // healthy majority without it (it counts as healthy when the master
    // still hears from it).
    if let Some(p) = outdated.iter().find(|p| !p.ready) {
        let counted = o
            .members
            .iter()
            .any(|m| m.name == p.name && m.voter && m.healthy);
        let remaining_healthy = healthy_voters - usize::from(counted);
        if remaining_healthy >= majority(voters) {
            return Step::ReplacePod(p.name.clone());
        }
        return Step::Wait(format!(
            "{} is outdated and not ready, but replacing it now would leave {remaining_healthy} \
             healthy of {voters} voters; waiting for the others to be healthy",
            p.name
        ));
    }
    if let Some(p) = o.pods.iter().find(|p| !p.ready) {
        return Step::Wait(format!("waiting for {} to be ready", p.name));
    }
    if let Some(m) = o.members.iter().find(|m| !m.healthy) {
        return Step::Wait(format!("waiting for member {} to be healthy", m.name));
    }
    if (o.pods.len() as i32) < o.desired {
        return Step::Wait("waiting for every pod to exist".into());
    }
    let next = outdated
        .iter()
        .filter(|p| Some(&p.name) != o.master.as_ref())
        .max_by_key(|p| p.ordinal)
        .or_else(|| outdated.first());
    match next {
        Some(p) => Step::ReplacePod(p.name.clone()),
        None => Step::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: i32, ready: bool, current: bool) -> PodView {
        PodView {
            name: format!("kv-{i}"),
            ordinal: i,
            ready,
            current,
            terminating: false,
        }
    }

    fn member(i: i32, voter: bool, healthy: bool) -> MemberView {
        MemberView {
            name: format!("kv-{i}"),
            voter,
            healthy,
            id: format!("{:016x}", i + 1),
        }
    }

    fn observed(desired: i32, set: i32, pods: Vec<PodView>, members: Vec<MemberView>) -> Observed {
        let ordinals = (0..20).map(|i| (format!("kv-{i}"), i)).collect();
        Observed {
            desired,
            set_replicas: set,
            pods,
            master: Some("kv-0".into()),
            members,
            ordinals,
            lost: Vec::new(),
            failing: Vec::new(),
        }
    }

    fn steady(n: i32) -> Observed {
        observed(
            n,
            n,
            (0..n).map(|i| pod(i, true, true)).collect(),
            (0..n).map(|i| member(i, true, true)).collect(),
        )
    }

    #[test]
    fn a_cluster_that_matches_its_spec_is_left_alone() {
        assert_eq!(plan(&steady(3)), Step::Idle);
        let mut o = steady(3);
        o.master = None;
        assert!(matches!(plan(&o), Step::Wait(_)));
    }

    #[test]
    fn a_pod_back_with_an_empty_volume_is_replaced_first_and_only_with_a_quorum() {
        let mut o = steady(3);
        o.members[1].healthy = false;
        o.lost = vec!["kv-1".into()];
        // Even with a scale-up pending, the lost member comes first.
        o.desired = 5;
        assert_eq!(plan(&o), Step::ReplaceMember("kv-1".into()));
        assert!(Step::ReplaceMember("kv-1".into()).is_scaling());
        // Not while the others lack a healthy majority without it.
        o.members[2].healthy = false;
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("kv-1 lost its volume")));
        // A lost pod that is no member any more is added back the same way.
        let mut o = steady(3);
        o.members.remove(1);
        o.lost = vec!["kv-1".into()];
        assert_eq!(plan(&o), Step::ReplaceMember("kv-1".into()));
    }

    #[test]
    fn scaling_up_grows_the_set_then_adds_and_promotes_one_pod_at_a_time() {
        let mut o = steady(3);
        o.desired = 5;
        assert_eq!(plan(&o), Step::SetReplicas(5));
        o.set_replicas = 5;
        o.pods.push(pod(3, false, true));
        o.pods.push(pod(4, false, true));
        assert_eq!(plan(&o), Step::AddLearner("kv-3".into()));
        o.members.push(member(3, false, true));
        // Not ready = not caught up: no promotion, and no second learner.
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("kv-3")));
        o.pods[3].ready = true;
        assert_eq!(plan(&o), Step::Promote("kv-3".into()));
        o.members[3].voter = true;
        assert_eq!(plan(&o), Step::AddLearner("kv-4".into()));
        o.members.push(member(4, true, true));
        o.pods[4].ready = true;
        assert_eq!(plan(&o), Step::Idle);
    }

    #[test]
    fn scaling_down_removes_members_before_pods_learners_first() {
        let mut o = steady(5);
        o.members.push(member(6, false, true));
        o.desired = 3;
        assert_eq!(plan(&o), Step::Remove("kv-6".into()));
        o.members.pop();
        assert_eq!(plan(&o), Step::Remove("kv-4".into()));
        o.members.pop();
        assert_eq!(plan(&o), Step::Remove("kv-3".into()));
        o.members.pop();
        assert_eq!(plan(&o), Step::SetReplicas(3));
        o.set_replicas = 3;
        o.pods.truncate(3);
        assert_eq!(plan(&o), Step::Idle);
    }

    #[test]
    fn never_removes_a_voter_when_the_rest_would_lack_a_healthy_majority() {
        let mut o = steady(5);
        o.desired = 3;
        // Two of the three voters that would remain are down.
        o.members[0].healthy = false;
        o.members[1].healthy = false;
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("not a majority")));
        // Removing the unhealthy member itself is fine if the rest are healthy.
        let mut o = steady(5);
        o.desired = 3;
        o.members[4].healthy = false;
        o.members[0].healthy = false;
        assert_eq!(plan(&o), Step::Remove("kv-4".into()));
        // A single voter is never removed.
        let mut o = steady(1);
        o.desired = 0;
        assert!(matches!(plan(&o), Step::Wait(_)));
    }

    #[test]
    fn upgrades_replace_one_pod_at_a_time_master_last_and_only_when_healthy() {
        let mut o = steady(3);
        for p in &mut o.pods {
            p.current = false;
        }
        o.master = Some("kv-2".into());
        assert_eq!(plan(&o), Step::ReplacePod("kv-1".into()));
        // kv-1 comes back on the new template but is not ready yet.
        o.pods[1] = pod(1, false, true);
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("kv-1")));
        o.pods[1].ready = true;
        assert_eq!(plan(&o), Step::ReplacePod("kv-0".into()));
        o.pods[0] = pod(0, true, true);
        o.members[1].healthy = false;
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("kv-1")));
        o.members[1].healthy = true;
        assert_eq!(plan(&o), Step::ReplacePod("kv-2".into()));
        o.pods[2] = pod(2, true, true);
        assert_eq!(plan(&o), Step::Idle);
    }

    #[test]
    fn a_rollback_replaces_the_broken_pod_the_upgrade_stopped_at() {
        // The new image crash-loops on the first pod replaced: the upgrade
        // stops there, with the other pods on the old template.
        let mut o = steady(3);
        for p in &mut o.pods {
            p.current = false;
        }
        o.pods[2] = pod(2, false, true);
        o.members[2].healthy = false;
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("kv-2")));
        // The image is reverted: kv-2 is now the only outdated pod, and it
        // never gets ready on its own (with OnDelete nothing else replaces
        // it). Waiting for it would wait forever.
        for p in &mut o.pods {
            p.current = !p.current;
        }
        assert_eq!(plan(&o), Step::ReplacePod("kv-2".into()));
        // One at a time: not while another pod is on its way out.
        o.pods[0].terminating = true;
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("kv-0")));
        o.pods[0].terminating = false;
        // Never when the others lack a healthy majority even without it.
        o.members[1].healthy = false;
        assert!(matches!(plan(&o), Step::Wait(_)));
        // A broken outdated pod whose member the master still hears from
        // (ready fails for another reason) counts as healthy: replacing it
        // needs a healthy majority without it.
        let mut o = steady(3);
        o.pods[1] = pod(1, false, false);
        o.members[2].healthy = false;
        assert!(matches!(plan(&o), Step::Wait(_)));
        o.members[2].healthy = true;
        assert_eq!(plan(&o), Step::ReplacePod("kv-1".into()));
    }

    #[test]
    fn a_member_failing_past_the_threshold_is_recreated_one_at_a_time_with_a_quorum() {
        let mut o = steady(5);
        o.members[3].healthy = false;
        o.members[4].healthy = false;
        o.failing = vec!["kv-4".into(), "kv-3".into()];
        assert_eq!(plan(&o), Step::Recreate("kv-4".into()));
        assert!(Step::Recreate("kv-4".into()).is_scaling());
        // Its pod is on its way out: nothing else until it is back.
        o.pods[4].terminating = true;
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("change under way")));
        // While it comes back as a learner, kv-3 waits.
        o.pods[4].terminating = false;
        o.failing = vec!["kv-3".into()];
        o.members[4].voter = false;
        assert!(matches!(plan(&o), Step::Wait(_)));
        // Never when the others lack a healthy majority without it.
        let mut o = steady(3);
        o.members[1].healthy = false;
        o.members[2].healthy = false;
        o.failing = vec!["kv-2".into()];
        assert!(matches!(plan(&o), Step::Wait(r) if r.contains("healthy")));
        // A lagging member the master still hears from counts as healthy.
        let mut o = steady(3);
        o.members[1].healthy = false;
        o.failing = vec!["kv-2".into()];
        assert!(matches!(plan(&o), Step::Wait(_)));
        o.members[1].healthy = true;
        assert_eq!(plan(&o), Step::Recreate("kv-2".into()));
        // A lone voter is never recreated.
        let mut o = steady(1);
        o.failing = vec!["kv-0".into()];
        assert!(matches!(plan(&o), Step::Wait(_)));
        // Members that are not pods of the set are left alone.
        let mut o = steady(3);
        o.failing = vec!["manual-node".into()];
        assert_eq!(plan(&o), Step::Idle);
    }

    #[test]
    fn failing_for_keeps_those_past_the_threshold_longest_first() {
        let since: BTreeMap<String, u64> = [
            ("kv-1".into(), 50),
            ("kv-2".into(), 10),
            ("kv-3".into(), 95),
        ]
        .into_iter()
        .collect();
        let past = failing_for(&since, 100, |t, now| now - t >= 30);
        assert_eq!(past, vec!["kv-2".to_string(), "kv-1".to_string()]);
    }

    #[test]
    fn members_that_are_not_pods_of_the_set_are_left_alone() {
        let mut o = steady(3);
        o.members.push(MemberView {
            name: "manual-node".into(),
            voter: false,
            healthy: true,
            id: "00000000000000ff".into(),
        });
        assert_eq!(plan(&o), Step::Idle);
    }
}
