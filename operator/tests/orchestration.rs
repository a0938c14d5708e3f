//! The operator's orchestration against real `phxkv` processes on loopback:
//! the planner and the membership client the controller uses, with this
//! file standing in for the StatefulSet controller (start a pod, stop one,
//! replace one). A writer keeps writing through every step; at the end
//! every acknowledged write must read back.
//!
//! Path: 3 replicas -> 5 -> 3, then an upgrade of every pod (master last),
//! then a failed upgrade (the image crash-loops) and its rollback, then a
//! follower that loses its volume and is replaced, then a follower that
//! dies for good and is recreated by self-healing, then a switchover to a
//! named follower.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use phxkv_operator::members::MembersClient;
use phxkv_operator::plan::{PodView, Step, failing_for, plan};
use phxkv_operator::render::Names;
use tokio::sync::Mutex;

const TOKEN: &str = "orchestration-test-token-0123456789";
const BOOTSTRAP: i32 = 3;

/// The `phxkv` binary of this build profile, built if missing (it lives in
/// another package, so Cargo does not hand its path to this test).
fn phxkv_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let bin = profile_dir.join("phxkv");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "-p", "phxkv-server", "--bin", "phxkv"]);
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build");
        assert!(status.success(), "building phxkv failed");
    }
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Pod {
    client_port: u16,
    peer_port: u16,
    version: u32,
    child: Option<Child>,
}

/// What the StatefulSet controller and kubelet would do, with processes.
struct FakeSet {
    dir: tempfile::TempDir,
    bin: PathBuf,
    names: Names,
    replicas: i32,
    /// The template version new pods get.
    version: u32,
    pods: BTreeMap<i32, Pod>,
    bootstrap_members: String,
    /// Template versions whose image is broken: the process exits at once
    /// (a crash loop, as far as readiness goes).
    broken: Vec<u32>,
}

impl FakeSet {
    fn new(bootstrap: i32) -> FakeSet {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token");
        let names = Names::of("kv");
        let mut set = FakeSet {
            dir,
            bin: phxkv_bin(),
            names,
            replicas: 0,
            version: 1,
            pods: BTreeMap::new(),
            bootstrap_members: String::new(),
            broken: Vec::new(),
        };
        let ports: Vec<(u16, u16)> = (0..bootstrap).map(|_| (free_port(), free_port())).collect();
        set.bootstrap_members = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("kv-{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            set.pods.insert(
                i as i32,
                Pod {
                    client_port: client,
                    peer_port: peer,
                    version: 1,
                    child: None,
                },
            );
            set.start(i as i32);
        }
        set.replicas = bootstrap;
        set
    }

    fn data_dir(&self, i: i32) -> PathBuf {
        self.dir.path().join(format!("kv-{i}"))
    }

    fn start(&mut self, i: i32) {
        let data = self.data_dir(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("kv-{i}.log")))
            .expect("log file");
        let pod = self.pods.get(&i).expect("pod");
        let mut cmd = Command::new(&self.bin);
        if self.broken.contains(&pod.version) {
            cmd.arg("--no-such-flag");
        }
        cmd.arg("serve")
            .args(["--id", &format!("kv-{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{}", pod.client_port)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", pod.peer_port)])
            .arg("--cluster-token-file")
            .arg(self.dir.path().join("token"))
            .args(["--cluster-id", "kv.test", "--lease", "1s"]);
        // As with `--discovery`: pods past the bootstrap count join.
        if i < BOOTSTRAP {
            cmd.args(["--initial-members", &self.bootstrap_members]);
        } else {
            cmd.arg("--join");
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn phxkv");
        self.pods.get_mut(&i).expect("pod").child = Some(child);
    }

    /// SIGTERM, as the kubelet does, then SIGKILL after a grace period.
    fn stop(&mut self, i: i32) {
        let Some(mut child) = self.pods.get_mut(&i).and_then(|p| p.child.take()) else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn resize(&mut self, n: i32) {
        for i in n..self.replicas {
            self.stop(i);
            self.pods.remove(&i);
            // whenScaled: Delete — the volume goes with the pod.
            let _ = std::fs::remove_dir_all(self.data_dir(i));
        }
        for i in self.replicas..n {
            self.pods.insert(
                i,
                Pod {
                    client_port: free_port(),
                    peer_port: free_port(),
                    version: self.version,
                    child: None,
                },
            );
            self.start(i);
        }
        self.replicas = n;
    }

    fn replace(&mut self, name: &str) {
        let i = self.names.ordinal(name).expect("a pod of the set");
        self.stop(i);
        let version = self.version;
        if let Some(p) = self.pods.get_mut(&i) {
            p.version = version;
        }
        self.start(i);
    }

    /// The pod's volume is lost: the pod is killed and comes back on an
    /// empty one (a PersistentVolume gone, a pod rescheduled to a node with
    /// fresh local storage).
    fn lose_volume(&mut self, name: &str) {
        let i = self.names.ordinal(name).expect("a pod of the set");
        if let Some(mut child) = self.pods.get_mut(&i).and_then(|p| p.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::remove_dir_all(self.data_dir(i)).expect("wipe the volume");
        self.start(i);
    }

    /// What the StatefulSet does after the operator deletes a pod and its
    /// claim: the pod comes back on a new, empty volume.
    fn recreate(&mut self, name: &str) {
        let i = self.names.ordinal(name).expect("a pod of the set");
        self.stop(i);
        let _ = std::fs::remove_dir_all(self.data_dir(i));
        self.start(i);
    }

    /// The pod's process dies and stays dead (a node gone, a crash loop).
    fn kill_for_good(&mut self, name: &str) {
        let i = self.names.ordinal(name).expect("a pod of the set");
        if let Some(mut child) = self.pods.get_mut(&i).and_then(|p| p.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self, i: i32) -> String {
        format!("http://127.0.0.1:{}", self.pods[&i].client_port)
    }

    fn peer_url(&self, name: &str) -> String {
        let i = self.names.ordinal(name).expect("a pod of the set");
        format!("http://127.0.0.1:{}", self.pods[&i].peer_port)
    }

    fn urls(&self) -> Vec<(String, String)> {
        self.pods
            .keys()
            .map(|i| (format!("kv-{i}"), self.url(*i)))
            .collect()
    }

    async fn pod_views(&self, http: &reqwest::Client) -> Vec<PodView> {
        let mut out = Vec::new();
        for (i, pod) in &self.pods {
            let ready = http
                .get(format!("{}/readyz", self.url(*i)))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            out.push(PodView {
                name: format!("kv-{i}"),
                ordinal: *i,
                ready,
                current: pod.version == self.version,
                terminating: false,
            });
        }
        out
    }

    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for i in self.pods.keys() {
            let text = std::fs::read_to_string(self.dir.path().join(format!("kv-{i}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- kv-{i}\n"));
            for l in &lines[lines.len().saturating_sub(8)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for FakeSet {
    fn drop(&mut self) {
        for pod in self.pods.values_mut() {
            if let Some(mut c) = pod.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Runs plan/step until the cluster matches `desired`; returns the steps.
async fn converge(
    set: &Arc<Mutex<FakeSet>>,
    members: &MembersClient,
    http: &reqwest::Client,
    desired: i32,
) -> Vec<(Step, Option<String>)> {
    drive(set, members, http, desired, None, None).await
}

/// Runs plan/step until the plan has waited for `stuck` without a step in
/// between (or, without `stuck`, until the cluster matches `desired`).
/// With `heal_after`, members failing that long are reported to the plan
/// as the controller does (self-healing).
async fn drive(
    set: &Arc<Mutex<FakeSet>>,
    members: &MembersClient,
    http: &reqwest::Client,
    desired: i32,
    stuck: Option<Duration>,
    heal_after: Option<Duration>,
) -> Vec<(Step, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut steps = Vec::new();
    let mut last = String::new();
    let mut waiting_since: Option<Instant> = None;
    // Member name -> (incarnation, first seen failing).
    let mut failing: BTreeMap<String, (String, Instant)> = BTreeMap::new();
    loop {
        let (urls, pods, names, set_replicas) = {
            let s = set.lock().await;
            (
                s.urls(),
                s.pod_views(http).await,
                s.names.clone(),
                s.replicas,
            )
        };
        let view = members.observe(&urls).await;
        let mut observed = view.observed(&names, desired, set_replicas, pods);
        if let Some(after) = heal_after {
            let now = Instant::now();
            failing = view
                .members
                .iter()
                .filter(|m| !m.healthy)
                .map(|m| {
                    let since = match failing.get(&m.name) {
                        Some((id, t)) if *id == m.id => *t,
                        _ => now,
                    };
                    (m.name.clone(), (m.id.clone(), since))
                })
                .collect();
            let since: BTreeMap<String, Instant> =
                failing.iter().map(|(n, (_, t))| (n.clone(), *t)).collect();
            observed.failing = failing_for(&since, now, |t, now| now - t >= after);
        }
        let step = plan(&observed);
        if Instant::now() > deadline {
            let logs = set.lock().await.logs_tail();
            panic!("did not converge to {desired}: last step {step:?}\n{observed:#?}\n{logs}");
        }
        match &step {
            // Done once every pod is back, not just replaced.
            Step::Idle if observed.pods.iter().all(|p| p.ready) => return steps,
            Step::Idle => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Step::Wait(why) => {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                if stuck.is_some_and(|d| since.elapsed() >= d) {
                    return steps;
                }
                if *why != last {
                    eprintln!("wait: {why}");
                    last = why.clone();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            _ => {}
        }
        waiting_since = None;
        eprintln!("step: {step:?} (master {:?})", view.master);
        // Only steps that succeeded are recorded; a failed one is planned
        // again (a new pod not listening yet answers 503, say).
        let done = match &step {
            Step::SetReplicas(n) => {
                set.lock().await.resize(*n);
                Ok(())
            }
            Step::ReplacePod(p) => {
                set.lock().await.replace(p);
                Ok(())
            }
            Step::Recreate(p) => {
                set.lock().await.recreate(p);
                // As the controller does: the clock starts again.
                if let Some((_, since)) = failing.get_mut(p) {
                    *since = Instant::now();
                }
                Ok(())
            }
            Step::AddLearner(p) | Step::Promote(p) | Step::Remove(p) => {
                let via = view.via().expect("a replica answered").to_string();
                let peer_url = set.lock().await.peer_url(p);
                members.change(&via, &step, &peer_url).await
            }
            Step::ReplaceMember(p) => {
                let via = view.via().expect("a replica answered").to_string();
                members.replace(&via, p).await.map(|r| {
                    eprintln!("replace {p}: {:?}: {}", r.state, r.message);
                })
            }
            Step::Idle | Step::Wait(_) => Ok(()),
        };
        match done {
            Ok(()) => steps.push((step.clone(), view.master.clone())),
            Err(e) => {
                eprintln!("step {step:?} failed, will re-plan: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Writes `w<n>` keys through random live pods until told to stop; returns
/// the acknowledged ones.
async fn writer(
    set: Arc<Mutex<FakeSet>>,
    http: reqwest::Client,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicU64>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let urls: Vec<String> = set
            .lock()
            .await
            .urls()
            .into_iter()
            .map(|(_, u)| u)
            .collect();
        let url = &urls[(n as usize) % urls.len()];
        let key = format!("w{n}");
        let ok = http
            .put(format!("{url}/v1/kv/{key}"))
            .body(format!("value-{n}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            acked.push(key);
            acked_count.fetch_add(1, Ordering::Relaxed);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acked
}

/// A follower of the three-pod set, with its incarnation.
async fn a_follower(set: &Arc<Mutex<FakeSet>>, members: &MembersClient) -> (&'static str, String) {
    let master = members
        .observe(&set.lock().await.urls())
        .await
        .master
        .expect("a master");
    let victim = ["kv-0", "kv-1", "kv-2"]
        .into_iter()
        .find(|p| *p != master)
        .expect("a follower");
    let id = members
        .cluster_info(&set.lock().await.url(0))
        .await
        .expect("cluster info")
        .members
        .iter()
        .find(|m| m.name == victim)
        .map(|m| m.id.clone())
        .expect("victim is a member");
    (victim, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_3_to_5_to_3_then_upgrade_with_writes_throughout() {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let members = MembersClient::new(http.clone(), TOKEN);
    let set = Arc::new(Mutex::new(FakeSet::new(BOOTSTRAP)));

    // Bootstrap: nothing to do once a master is elected.
    let steps = converge(&set, &members, &http, 3).await;
    assert!(
        steps.is_empty(),
        "a fresh 3-node cluster needs no steps: {steps:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicU64::new(0));
    let writes = tokio::spawn(writer(
        set.clone(),
        http.clone(),
        stop.clone(),
        acked_count.clone(),
    ));
    let progressed = |before: u64| acked_count.load(Ordering::Relaxed) > before;

    // 3 -> 5: grow, then add and promote kv-3, then kv-4.
    let before = acked_count.load(Ordering::Relaxed);
    let up = converge(&set, &members, &http, 5).await;
    let kinds: Vec<&Step> = up.iter().map(|(s, _)| s).collect();
    assert_eq!(
        kinds,
        vec![
            &Step::SetReplicas(5),
            &Step::AddLearner("kv-3".into()),
            &Step::Promote("kv-3".into()),
            &Step::AddLearner("kv-4".into()),
            &Step::Promote("kv-4".into()),
        ]
    );
    let info = members
        .cluster_info(&set.lock().await.url(0))
        .await
        .expect("cluster info");
    assert_eq!(info.members.len(), 5);
    assert!(progressed(before), "writes succeeded while scaling up");

    // 5 -> 3: remove kv-4 and kv-3 (handing mastership off if needed),
    // then shrink.
    let before = acked_count.load(Ordering::Relaxed);
    let down = converge(&set, &members, &http, 3).await;
    let kinds: Vec<&Step> = down.iter().map(|(s, _)| s).collect();
    assert_eq!(
        kinds,
        vec![
            &Step::Remove("kv-4".into()),
            &Step::Remove("kv-3".into()),
            &Step::SetReplicas(3),
        ]
    );
    let info = members
        .cluster_info(&set.lock().await.url(0))
        .await
        .expect("cluster info");
    assert_eq!(info.members.len(), 3);
    assert!(progressed(before), "writes succeeded while scaling down");

    // Upgrade: a new template; every pod replaced once, the master last.
    let before = acked_count.load(Ordering::Relaxed);
    set.lock().await.version = 2;
    let upgrade = converge(&set, &members, &http, 3).await;
    let replaced: Vec<&str> = upgrade
        .iter()
        .filter_map(|(s, _)| match s {
            Step::ReplacePod(p) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    let mut sorted = replaced.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["kv-0", "kv-1", "kv-2"],
        "each pod once: {upgrade:?}"
    );
    for (i, (step, master)) in upgrade.iter().enumerate() {
        if let Step::ReplacePod(p) = step
            && Some(p) == master.as_ref()
        {
            assert_eq!(i, upgrade.len() - 1, "the master goes last: {upgrade:?}");
        }
    }
    assert!(progressed(before), "writes succeeded while upgrading");

    // A failed upgrade: the new image crash-loops. The first pod replaced
    // never gets ready and the upgrade stops there, the others untouched.
    let before = acked_count.load(Ordering::Relaxed);
    {
        let mut s = set.lock().await;
        s.broken.push(3);
        s.version = 3;
    }
    let failed = drive(&set, &members, &http, 3, Some(Duration::from_secs(5)), None).await;
    let broken: Vec<&str> = failed
        .iter()
        .filter_map(|(s, _)| match s {
            Step::ReplacePod(p) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        broken.len(),
        1,
        "the upgrade stops at the first pod: {failed:?}"
    );
    let broken = broken[0].to_string();
    // The rollback: the image is reverted, and the broken pod, now the
    // only outdated one and never ready, is replaced.
    set.lock().await.version = 2;
    let rolled_back = converge(&set, &members, &http, 3).await;
    let kinds: Vec<&Step> = rolled_back.iter().map(|(s, _)| s).collect();
    assert_eq!(kinds, vec![&Step::ReplacePod(broken.clone())]);
    assert!(
        progressed(before),
        "writes succeeded through the failed upgrade"
    );

    // A follower's volume is lost: the operator replaces the member on its
    // own, and the pod rejoins as a new incarnation.
    let before = acked_count.load(Ordering::Relaxed);
    let (victim, old_id) = a_follower(&set, &members).await;
    set.lock().await.lose_volume(victim);
    let healed = converge(&set, &members, &http, 3).await;
    assert!(
        healed
            .iter()
            .any(|(s, _)| *s == Step::ReplaceMember(victim.into())),
        "the member with the lost volume was replaced: {healed:?}"
    );
    let info = members
        .cluster_info(&set.lock().await.url(0))
        .await
        .expect("cluster info");
    let replaced = info
        .members
        .iter()
        .find(|m| m.name == victim)
        .expect("still a member");
    assert_ne!(replaced.id, old_id, "a new incarnation");
    assert_eq!(replaced.role, phxkv::api::service::MemberRole::Voter);
    assert!(progressed(before), "writes succeeded while replacing");

    // Self-healing: a follower dies for good. Once it has been failing for
    // the threshold it is recreated on a new volume and replaced as a new
    // incarnation.
    let before = acked_count.load(Ordering::Relaxed);
    let (victim, old_id) = a_follower(&set, &members).await;
    set.lock().await.kill_for_good(victim);
    let healed = drive(&set, &members, &http, 3, None, Some(Duration::from_secs(3))).await;
    let kinds: Vec<&Step> = healed.iter().map(|(s, _)| s).collect();
    assert_eq!(
        kinds.first(),
        Some(&&Step::Recreate(victim.into())),
        "the dead member is recreated: {healed:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|s| matches!(s, Step::Recreate(_)))
            .count(),
        1,
        "once, not again while it starts: {healed:?}"
    );
    assert!(
        kinds.contains(&&Step::ReplaceMember(victim.into())),
        "then replaced as a new incarnation: {healed:?}"
    );
    let info = members
        .cluster_info(&set.lock().await.url(0))
        .await
        .expect("cluster info");
    let healed_member = info
        .members
        .iter()
        .find(|m| m.name == victim)
        .expect("still a member");
    assert_ne!(healed_member.id, old_id, "a new incarnation");
    assert_eq!(healed_member.role, phxkv::api::service::MemberRole::Voter);
    assert!(progressed(before), "writes succeeded while healing");

    // Switchover: mastership moves to a named follower, as the operator
    // asks for it, with writes going on.
    let before = acked_count.load(Ordering::Relaxed);
    let view = members.observe(&set.lock().await.urls()).await;
    let from = view.master.clone().expect("a master");
    let target = ["kv-0", "kv-1", "kv-2"]
        .into_iter()
        .find(|p| *p != from)
        .expect("a follower");
    let via = view.via().expect("a replica answered").to_string();
    let mut moved = None;
    for _ in 0..20 {
        match members.transfer(&via, target).await {
            Ok(info) => {
                moved = Some(info);
                break;
            }
            // Just replaced or healed members may not be caught up yet.
            Err(e) => {
                eprintln!("switchover to {target} not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let info = moved.expect("the switchover went through");
    assert_eq!(info.master.as_deref(), Some(target), "{from} -> {target}");
    let view = members.observe(&set.lock().await.urls()).await;
    assert_eq!(view.master.as_deref(), Some(target));
    let steps = converge(&set, &members, &http, 3).await;
    assert!(steps.is_empty(), "nothing else to do: {steps:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !progressed(before) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(progressed(before), "writes succeeded after the switchover");

    stop.store(true, Ordering::Relaxed);
    let acked = writes.await.expect("writer");
    assert!(!acked.is_empty());

    // Every acknowledged write survived every step.
    let url = set.lock().await.url(0);
    for key in &acked {
        let n = key.trim_start_matches('w');
        let response = http
            .get(format!("{url}/v1/kv/{key}"))
            .send()
            .await
            .expect("read");
        assert!(
            response.status().is_success(),
            "acknowledged {key} is missing"
        );
        let body = response.text().await.expect("body");
        assert_eq!(body, format!("value-{n}"));
    }
    eprintln!("{} acknowledged writes, all read back", acked.len());
}

/// A cluster with `spec.tls.clientCertAuth`: its replicas refuse a client
/// without a certificate of the cluster's CA, and the operator, which
/// presents the replicas' own certificate from their Secret, still reaches
/// them (here one real replica, TLS and auth on, its files as the
/// operator's Secret would hold them).
#[tokio::test]
async fn the_operator_reaches_replicas_that_want_client_certificates() {
    use phxkv::tls::issue;
    use phxkv_operator::certs::{self, ClusterTls};
    use phxkv_operator::crd::{PaxosKV, PaxosKVSpec};

    phxkv_operator::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let day = Duration::from_secs(86_400);
    let ca = issue::new_ca("phxkv CA kv.test", day).expect("CA");
    let leaf = issue::issue(&ca, "kv.test", &["localhost".to_string()], day).expect("leaf");
    let mut pkv = PaxosKV::new("kv", PaxosKVSpec::default());
    pkv.metadata.namespace = Some("test".into());
    let secret = certs::tls_secret(&pkv, &Names::of("kv"), &leaf, &ca.cert_pem);
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let (cert, key, ca_file) = (
        file("tls.crt", &leaf.cert_pem),
        file("tls.key", &leaf.key_pem),
        file("ca.crt", &ca.cert_pem),
    );
    let token = file("token", TOKEN);
    let (client_port, peer_port) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("kv-0.log")).expect("log file");
    let child = Command::new(phxkv_bin())
        .arg("serve")
        .args(["--id", "kv-0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{client_port}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
        .args([
            "--initial-members",
            &format!("kv-0=https://localhost:{peer_port}"),
        ])
        .arg("--cluster-token-file")
        .arg(&token)
        .args(["--auth", "--client-cert-auth", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-ca")
        .arg(&ca_file)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn phxkv");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);

    let base = format!("https://localhost:{client_port}");
    let tls = ClusterTls::from_secret(&secret).expect("the Secret's CA");
    assert!(tls.identity.is_some(), "tls.crt and tls.key");
    let members = MembersClient::new(tls.http_client().expect("client"), TOKEN);
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        match members.cluster_info(&base).await {
            Ok(info) if info.master.is_some() => break info,
            other if Instant::now() > deadline => {
                let logs = std::fs::read_to_string(dir.path().join("kv-0.log")).unwrap_or_default();
                panic!("no answer with the replicas' certificate: {other:?}\n{logs}");
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(info.members.len(), 1, "{info:?}");

    // The same CA without a certificate to present: refused in the handshake.
    let bare = certs::http_client(&ca.cert_pem, None).expect("client");
    let refused = MembersClient::new(bare, TOKEN).cluster_info(&base).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
}
