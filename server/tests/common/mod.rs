//! A real cluster for tests: `phxkv serve` processes on loopback, each with
//! its own data directory, that tests can kill, pause, restart and query
//! over real HTTP.

#![allow(dead_code)]

pub mod pki;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-cluster-token-0123456789";

/// One `phxkv serve` process.
pub struct Proc {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// A cluster of processes; killed when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub procs: Vec<Proc>,
    pub members: String,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
    /// Certificates for both ports; none serves plain HTTP.
    pub tls: Option<pki::TlsFiles>,
}

/// A port nobody listens on now and that this test binary has not handed
/// out before (tests run in parallel; a port handed out twice would let
/// one cluster's node answer another's).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN.lock().expect("ports");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Cluster {
    /// Starts `n` nodes and waits until they agree on a master.
    pub async fn start(n: usize, extra_args: &[&str]) -> Cluster {
        Self::start_with_env(n, extra_args, &[]).await
    }

    /// Like [`Cluster::start`], with extra environment for every process.
    pub async fn start_with_env(n: usize, extra_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let mut c = Self::prepare(n, extra_args, env, None);
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_for_master(Duration::from_secs(20)).await;
        c
    }

    /// A cluster of `n` nodes none of which runs yet ([`Cluster::spawn`]).
    pub fn start_later(n: usize, extra_args: &[&str]) -> Cluster {
        Self::prepare(n, extra_args, &[], None)
    }

    /// Starts `n` nodes serving both ports over TLS with `files` (one
    /// certificate for every node, valid for 127.0.0.1), reached by `http`.
    pub async fn start_tls(
        n: usize,
        extra_args: &[&str],
        files: pki::TlsFiles,
        http: reqwest::Client,
    ) -> Cluster {
        let mut c = Self::prepare(n, extra_args, &[], Some(files));
        c.http = http;
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_for_master(Duration::from_secs(20)).await;
        c
    }

    /// Like [`Cluster::start_later`], with TLS on both ports.
    pub fn start_later_tls(n: usize, extra_args: &[&str], files: pki::TlsFiles) -> Cluster {
        Self::prepare(n, extra_args, &[], Some(files))
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn prepare(
        n: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
        tls: Option<pki::TlsFiles>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
        let mut procs = Vec::new();
        for i in 0..n {
            let name = format!("n{}", i + 1);
            procs.push(Proc {
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            });
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members = procs
            .iter()
            .map(|p| format!("{}={scheme}://127.0.0.1:{}", p.name, p.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            dir,
            procs,
            members,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            tls,
        }
    }

    pub fn url(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.procs[i].client_port
        )
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.procs[i].peer_port)
    }

    /// The command line that starts node `i` (bootstrap members, token, a
    /// short lease so failover tests are quick).
    pub fn command(&self, i: usize) -> Command {
        let p = &self.procs[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phxkv"));
        cmd.arg("serve")
            .args(["--id", &p.name])
            .arg("--data-dir")
            .arg(&p.data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", p.client_port)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", p.peer_port)])
            .args(["--initial-members", &self.members])
            .arg("--cluster-token-file")
            .arg(self.dir.path().join("token"))
            .args(&self.extra_args);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key)
                .arg("--tls-ca")
                .arg(&tls.ca);
        }
        if !self.extra_args.iter().any(|a| a == "--lease") {
            cmd.args(["--lease", "1s"]);
        }
        cmd
    }

    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.procs[i].log)
            .expect("log file");
        let child = self
            .command(i)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn phxkv");
        self.procs[i].child = Some(child);
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.procs[i].child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        self.signal(i, "-TERM");
        let mut c = self.procs[i].child.take().expect("running");
        c.wait().expect("exit status")
    }

    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(&self.procs[i].log).unwrap_or_default()
    }

    pub async fn cluster_info(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/v1/cluster", self.url(i)))
            // The cluster token is the admin credential with --auth on
            // and ignored without.
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Index of the node every live node names as master.
    pub async fn wait_for_master(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut names = Vec::new();
            for i in 0..self.procs.len() {
                if self.procs[i].child.is_none() {
                    continue;
                }
                let m = self
                    .cluster_info(i)
                    .await
                    .and_then(|v| v["master"].as_str().map(str::to_string));
                names.push(m);
            }
            if let Some(Some(first)) = names.first()
                && names.iter().all(|n| n.as_deref() == Some(first.as_str()))
                && let Some(i) = self.procs.iter().position(|p| &p.name == first)
                && self.procs[i].child.is_some()
            {
                return i;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..self.procs.len()).map(|i| self.log_of(i)).collect();
                panic!(
                    "no agreed master within {within:?}: {names:?}\n{}",
                    logs.join("\n----\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// PUT with retries on 503 (an election in progress).
    pub async fn put(&self, i: usize, key: &str, value: &str) -> reqwest::Response {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self
                .http
                .put(format!("{}/v1/kv/{key}", self.url(i)))
                .bearer_auth(TOKEN)
                .body(value.to_string())
                .send()
                .await;
            match r {
                Ok(r) if r.status() != 503 => return r,
                _ if Instant::now() > deadline => panic!("put {key} kept failing"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `/metrics` of node `i`, as text.
    pub async fn metrics_text(&self, i: usize) -> String {
        self.http
            .get(format!("{}/metrics", self.url(i)))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// POSTs to `path` on node `i` with the cluster token.
    pub async fn post_with_token(&self, i: usize, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url(i)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, i: usize, key: &str, query: &str) -> Option<(u16, Vec<u8>)> {
        let r = self
            .http
            .get(format!("{}/v1/kv/{key}{query}", self.url(i)))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.bytes().await.ok()?.to_vec()))
    }
}

/// Lines of each node's log a failing test prints.
const LOG_LINES_ON_FAILURE: usize = 80;

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.resume(i);
            self.kill9(i);
        }
        // The logs live in a temporary directory that goes with the
        // cluster: a test that failed (once, in CI, say) shows what its
        // nodes said last, or nobody ever learns why.
        if std::thread::panicking() {
            for (i, p) in self.procs.iter().enumerate() {
                let log = self.log_of(i);
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(LOG_LINES_ON_FAILURE);
                eprintln!(
                    "--- the last {} lines of {}'s log ---",
                    lines.len() - from,
                    p.name
                );
                for line in &lines[from..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Runs the `phxkv` command line with `args` and extra environment
/// (without the client settings a developer's shell may carry); its exit
/// code, stdout and stderr.
pub fn run_phxkv(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args(args)
        .env_remove("PHXKV_CLUSTER_TOKEN_FILE")
        .env_remove("PHXKV_ENDPOINTS")
        .env_remove("PHXKV_CACERT")
        .env_remove("PHXKV_TOKEN")
        .env_remove("PHXKV_TOKEN_FILE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run phxkv");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
