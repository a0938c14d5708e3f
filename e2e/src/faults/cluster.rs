//! The `phxkv serve` processes of one run: started on loopback, each with
//! its own data directory, log file and peer proxy; killed, paused, resumed,
//! wiped and restarted by the nemesis; asked about the cluster through the
//! public API like an operator would.
//!
//! With TLS, every node serves both ports with one certificate for
//! 127.0.0.1 signed by a CA made for the run (mutual TLS between peers, as
//! in Kubernetes), and the harness's clients trust that CA.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proxy::{self, Links};

pub const TOKEN: &str = "fault-injection-token-0123456789";

pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub proxy_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    /// Times this node was started.
    pub starts: usize,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub nodes: Vec<Node>,
    pub members: String,
    pub links: Arc<Links>,
    pub http: reqwest::Client,
    /// Every node's `--read-mode`.
    pub read_mode: String,
    /// The certificate files every node serves, when the run uses TLS.
    pub tls: Option<phxkv::tls::TlsPaths>,
}

fn free_port(taken: &mut Vec<u16>) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

impl Cluster {
    /// Prepares `n` nodes under `dir` (nothing runs yet), with TLS on both
    /// ports of every node when `tls`.
    pub async fn new(dir: &Path, bin: &Path, n: usize, tls: bool) -> std::io::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("token"), TOKEN)?;
        let tls = if tls {
            Some(phxkv::tls::dev_ca::ensure(&dir.join("tls")).map_err(std::io::Error::other)?)
        } else {
            None
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        // The proxies bind first and keep their ports; the nodes' ports are
        // then picked around them. Picked the other way round, a proxy could
        // be handed a port just released for a node, and that node would
        // never start ("address in use") while its peers talk to the proxy.
        let links = Links::new();
        let mut taken = Vec::new();
        let mut proxy_ports = Vec::new();
        for i in 0..n {
            let port = proxy::start(i, links.clone()).await?;
            taken.push(port);
            proxy_ports.push(port);
        }
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (free_port(&mut taken), free_port(&mut taken)))
            .collect();
        links.set_peers(&ports.iter().map(|(_, p)| *p).collect::<Vec<_>>());
        let mut nodes = Vec::new();
        for (i, (client_port, peer_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            nodes.push(Node {
                data_dir: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                name,
                client_port: *client_port,
                peer_port: *peer_port,
                proxy_port: proxy_ports[i],
                child: None,
                paused: false,
                starts: 0,
            });
        }
        let members = nodes
            .iter()
            .map(|n| format!("{}={scheme}://127.0.0.1:{}", n.name, n.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let http = client(tls.as_ref())?;
        Ok(Cluster {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            nodes,
            members,
            links,
            read_mode: "lease".into(),
            http,
            tls,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn url(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.nodes[i].client_port
        )
    }

    /// A client of its own (its own connections) for the nodes' client
    /// ports.
    pub fn client(&self) -> reqwest::Client {
        client(self.tls.as_ref()).unwrap_or_else(|_| self.http.clone())
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    pub fn start(&mut self, i: usize) -> std::io::Result<()> {
        if self.running(i) {
            return Ok(());
        }
        let n = &self.nodes[i];
        let tls_args: Vec<&std::ffi::OsStr> = match &self.tls {
            Some(t) => vec![
                "--tls-cert".as_ref(),
                t.cert.as_os_str(),
                "--tls-key".as_ref(),
                t.key.as_os_str(),
                "--tls-ca".as_ref(),
                t.ca.as_deref().unwrap_or(&t.cert).as_os_str(),
                // As the operator runs them: the peer port admits only the
                // replicas' own common name.
                "--peer-cert-allowed-cn".as_ref(),
                phxkv::tls::dev_ca::COMMON_NAME.as_ref(),
            ],
            None => Vec::new(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .args(["--id", &n.name])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", n.client_port)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", n.peer_port)])
            .args(["--initial-members", &self.members])
            .arg("--cluster-token-file")
            .arg(self.dir.join("token"))
            .args(["--lease", "1s", "--snapshot-every", "200"])
            .args(["--read-mode", &self.read_mode])
            .args([
                "--peer-proxy",
                &format!("http://127.0.0.1:{}", n.proxy_port),
            ])
            .args(&tls_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        self.nodes[i].starts += 1;
        Ok(())
    }

    /// Whether node `i`'s process is alive (one that died on its own, or
    /// was killed from outside, is reaped here and restarted by `heal`).
    pub fn running(&mut self, i: usize) -> bool {
        if let Some(c) = self.nodes[i].child.as_mut()
            && !matches!(c.try_wait(), Ok(None))
        {
            self.nodes[i].child = None;
            self.nodes[i].paused = false;
        }
        self.nodes[i].child.is_some()
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some() && !self.nodes[i].paused
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.nodes[i].child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.nodes[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, "-CONT");
            self.nodes[i].paused = false;
        }
    }

    /// Kills node `i` and deletes its data directory: a lost volume.
    pub fn wipe(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        match std::fs::remove_dir_all(&self.nodes[i].data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Copies node `i`'s data directory (the node must be stopped, so the
    /// copy is what a volume snapshot taken at that moment would hold) and
    /// returns where the copy is.
    pub fn copy_volume(&self, i: usize) -> std::io::Result<PathBuf> {
        let copy = self.dir.join(format!("{}.copy", self.nodes[i].name));
        match std::fs::remove_dir_all(&copy) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        copy_dir(&self.nodes[i].data_dir, &copy)?;
        Ok(copy)
    }

    /// Kills node `i` and puts `copy` back in place of its data directory:
    /// a volume restored from an older snapshot.
    pub fn put_back(&mut self, i: usize, copy: &Path) -> std::io::Result<()> {
        self.wipe(i)?;
        std::fs::rename(copy, &self.nodes[i].data_dir)
    }

    /// Waits up to `within` for node `i`'s process to end on its own; its
    /// exit status if it did (-1 for a signal), `None` if it still runs.
    pub async fn exit_within(&mut self, i: usize, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.nodes[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                self.nodes[i].paused = false;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The highest commit index any running node reports.
    pub async fn commit_index(&self) -> u64 {
        let mut highest = 0;
        for i in 0..self.nodes.len() {
            if let Some(info) = self.info(i).await {
                highest = highest.max(info["commit_index"].as_u64().unwrap_or(0));
            }
        }
        highest
    }

    /// Node `i`'s applied index, if it answers.
    pub async fn applied(&self, i: usize) -> Option<u64> {
        self.info(i).await?["applied_index"].as_u64()
    }

    /// `GET /v1/cluster` on node `i`.
    pub async fn info(&self, i: usize) -> Option<Value> {
        if !self.up(i) {
            return None;
        }
        let r = self
            .http
            .get(format!("{}/v1/cluster", self.url(i)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The index of the node that some running node names as master.
    pub async fn master(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if let Some(info) = self.info(i).await
                && let Some(m) = info["master"].as_str()
            {
                return self.nodes.iter().position(|n| n.name == m);
            }
        }
        None
    }

    /// Calls the replace endpoint for `name` through running nodes until it
    /// says done or `within` passes. The node's peer URL goes along, so a
    /// member that was removed is added back the same way.
    pub async fn replace(&self, name: &str, within: Duration) -> Result<(), String> {
        let peer_url = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| format!("{}://127.0.0.1:{}", self.scheme(), n.peer_port))
            .unwrap_or_default();
        let deadline = Instant::now() + within;
        let mut last = String::new();
        let mut k = 0;
        while Instant::now() < deadline {
            k += 1;
            let candidates: Vec<usize> = (0..self.nodes.len()).filter(|i| self.up(*i)).collect();
            if candidates.is_empty() {
                return Err("no node runs".into());
            }
            let i = candidates[k % candidates.len()];
            let r = self
                .http
                .post(format!(
                    "{}/v1/cluster/members/{name}/replace?peer_url={peer_url}",
                    self.url(i)
                ))
                .bearer_auth(TOKEN)
                .timeout(Duration::from_secs(15))
                .send()
                .await;
            match r {
                Ok(r) => {
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if status.is_success() && body["state"] == "done" {
                        return Ok(());
                    }
                    last = format!("{status} {body}");
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!("replacing {name} did not finish: {last}"))
    }

    /// Removes member `name` through running nodes; why not, if it is not
    /// gone within `within`.
    pub async fn remove(&self, name: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut k = 0;
        let mut last = String::new();
        while Instant::now() < deadline {
            k += 1;
            let i = k % self.nodes.len();
            if !self.up(i) {
                continue;
            }
            let r = self
                .http
                .delete(format!("{}/v1/cluster/members/{name}", self.url(i)))
                .bearer_auth(TOKEN)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    last = format!("{status} {}", r.text().await.unwrap_or_default());
                    // An earlier attempt whose answer was lost did it.
                    if status == 404 && last.contains("member_not_found") {
                        return Ok(());
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last)
    }

    /// True when every node is a voter of the configuration a running node
    /// reports: only then may one lose its volume without the cluster
    /// losing its majority for good.
    pub async fn all_voters(&self) -> bool {
        for i in 0..self.nodes.len() {
            if let Some(info) = self.info(i).await
                && info["node_state"] == "member"
                && let Some(members) = info["members"].as_array()
            {
                return self.nodes.iter().all(|n| {
                    members
                        .iter()
                        .any(|m| m["name"] == n.name.as_str() && m["role"] == "voter")
                }) && members.len() == self.nodes.len();
            }
        }
        false
    }

    /// Heals every fault: links, paused and stopped processes.
    pub fn heal(&mut self) -> std::io::Result<()> {
        self.links.heal();
        for i in 0..self.nodes.len() {
            self.resume(i);
            if !self.running(i) {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Waits until every node is a member, one master is known and no
    /// node reports a divergence; the issue found, if any, otherwise.
    pub async fn settle(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut ok = true;
            let mut issues = Vec::new();
            let mut masters = Vec::new();
            for i in 0..self.nodes.len() {
                match self.info(i).await {
                    Some(info) => {
                        if !info["divergence"].is_null() {
                            return Err(format!(
                                "{} reports a divergence: {}",
                                self.nodes[i].name, info["divergence"]
                            ));
                        }
                        if info["node_state"] != "member" {
                            ok = false;
                            issues
                                .push(format!("{} is {}", self.nodes[i].name, info["node_state"]));
                        }
                        masters.push(info["master"].as_str().map(str::to_string));
                    }
                    None => {
                        ok = false;
                        issues.push(format!(
                            "{} does not answer (its log ends: {})",
                            self.nodes[i].name,
                            self.last_log_line(i)
                        ));
                    }
                }
            }
            last = issues.join("; ");
            if ok && masters.iter().all(|m| m.is_some() && *m == masters[0]) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("the cluster did not settle: {last}"))
    }

    /// The last line node `i` logged, for a report.
    fn last_log_line(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log)
            .ok()
            .and_then(|t| {
                t.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "nothing".into())
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.kill(i);
        }
    }
}

/// Copies the directory tree at `from` to `to`.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A client for the nodes' client ports: never through a proxy, and with
/// TLS trusting only the run's CA.
fn client(tls: Option<&phxkv::tls::TlsPaths>) -> std::io::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(ca) = tls.and_then(|t| t.ca.as_ref()) {
        let pem = std::fs::read(ca)?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(std::io::Error::other)?;
        builder = builder.tls_certs_only([cert]);
    }
    builder.build().map_err(std::io::Error::other)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
