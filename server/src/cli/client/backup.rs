//! `phxkv backup`: save a consistent snapshot of a running cluster to a
//! file, check a file, and seed the data directory of a new cluster's first
//! member from one.
//!
//! The file is the body of `GET /v1/admin/snapshot` as it came (see
//! [`crate::storage::backup_file`]); it is checked as it arrives and again
//! before a restore touches anything, so a truncated or damaged file is
//! refused with one line instead of seeding a cluster with half a store.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::ConnectArgs;
use super::http::{self, Client};
use super::members::read_token;
use crate::cli::CliError;
use crate::cluster::bootstrap::{self, MemberRecord};
use crate::kv::{Store, StoreConfig};
use crate::paxos::SnapshotMeta;
use crate::storage::backup_file::{BackupError, Decoder, FeedError, Header};
use crate::storage::snapshot_file::{Reader, Writer};
use crate::storage::{DiskStore, Identity};

/// Bytes read from a backup file at a time.
const READ_BYTES: usize = 256 << 10;

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: BackupAction,
}

#[derive(Subcommand, Debug)]
pub enum BackupAction {
    /// Save a consistent snapshot of the cluster to FILE. It holds every
    /// write acknowledged before the command started; the checksum is
    /// verified as it arrives. Needs the cluster token.
    Save {
        /// Where to write the backup (written to FILE.tmp, synced, renamed).
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// A file holding the cluster token (the one the nodes were started
        /// with).
        #[arg(long, env = "PHXKV_CLUSTER_TOKEN_FILE", value_name = "PATH")]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print a backup's header and verify its checksum.
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
    /// Seed the data directory of the first member of a NEW cluster from a
    /// backup: keys, versions and revisions as they were. Then start it with
    /// `phxkv serve` and the same --data-dir, --name, --cluster-id and
    /// --initial-members; further members start with --join and are added
    /// (`phxkv members add`), and catch up from it.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new member's data directory; must be empty or absent.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The new member's name (its --name when serving).
        #[arg(long, alias = "id")]
        name: String,
        /// The new cluster's id (its --cluster-id when serving). May differ
        /// from the backed-up cluster's.
        #[arg(long)]
        cluster_id: String,
        /// This member alone, as `name=http://host:peerport` (the same
        /// value `phxkv serve` gets).
        #[arg(long, value_name = "NAME=URL")]
        initial_members: String,
    },
}

/// Runs `phxkv backup`.
pub async fn run(args: BackupArgs) -> Result<(), CliError> {
    match args.action {
        BackupAction::Save {
            file,
            force,
            token_file,
            connect,
        } => save(&file, force, token_file.as_ref(), &connect).await,
        BackupAction::Inspect { file } => inspect(&file),
        BackupAction::Restore {
            file,
            data_dir,
            name,
            cluster_id,
            initial_members,
        } => restore(&file, &data_dir, &name, &cluster_id, &initial_members),
    }
}

fn fatal(file: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Fatal(format!("{}: {e}", file.display()))
}

/// Prints how much arrived, now and then, when stderr is a terminal.
struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    fn show(&mut self, bytes: u64, done: bool) {
        if !self.on || (!done && self.last.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last = Instant::now();
        let mib = bytes as f64 / f64::from(1 << 20);
        eprint!("\rsaving: {mib:.1} MiB{}", if done { "\n" } else { "" });
    }
}

async fn save(
    file: &Path,
    force: bool,
    token_file: Option<&PathBuf>,
    connect: &ConnectArgs,
) -> Result<(), CliError> {
    if file.exists() && !force {
        return Err(fatal(file, "already exists; pass --force to replace it"));
    }
    let client = Client::new(connect)?.with_token(read_token(token_file)?);
    let resp = client
        .send_streaming(|h, base| h.get(format!("{base}/v1/admin/snapshot")))
        .await?;
    let mut resp = http::check(resp).await?;
    let mut tmp_name = file.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = async {
        let mut out = File::create(&tmp).map_err(|e| fatal(&tmp, e))?;
        let mut decoder = Decoder::new();
        let mut progress = Progress::new();
        let mut total = 0u64;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    return Err(CliError::Unavailable(format!(
                        "the snapshot stream broke off: {e}"
                    )));
                }
            };
            decoder
                .feed(&chunk, &mut |_: &[u8]| Ok::<(), String>(()))
                .map_err(|e| fatal(file, feed_error(e)))?;
            out.write_all(&chunk).map_err(|e| fatal(&tmp, e))?;
            total += chunk.len() as u64;
            progress.show(total, false);
        }
        progress.show(total, true);
        let header = decoder
            .finish()
            .map_err(|e| fatal(file, format!("the server sent a bad snapshot: {e}")))?
            .clone();
        out.sync_all().map_err(|e| fatal(&tmp, e))?;
        drop(out);
        std::fs::rename(&tmp, file).map_err(|e| fatal(file, e))?;
        sync_parent(file)?;
        Ok((header, total))
    }
    .await;
    match result {
        Ok((header, total)) => {
            println!(
                "saved {}: cluster {}, revision {}, index {}, {total} bytes",
                file.display(),
                header.cluster_id,
                header.revision,
                header.index
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn sync_parent(file: &Path) -> Result<(), CliError> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| fatal(parent, e))
}

fn feed_error<E: std::fmt::Display>(e: FeedError<E>) -> String {
    match e {
        FeedError::Backup(e) => e.to_string(),
        FeedError::Sink(e) => e.to_string(),
    }
}

/// Reads `file` through a decoder, handing the data to `sink`; the header
/// once the whole file checked out.
fn read_backup<E: std::fmt::Display>(
    file: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(Header, u64), CliError> {
    let mut input = File::open(file).map_err(|e| fatal(file, e))?;
    let mut decoder = Decoder::new();
    let mut buf = vec![0; READ_BYTES];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fatal(file, e)),
        };
        decoder
            .feed(&buf[..n], &mut sink)
            .map_err(|e| fatal(file, feed_error(e)))?;
    }
    let header = decoder
        .finish()
        .map_err(|e: BackupError| fatal(file, e))?
        .clone();
    Ok((header, decoder.data_bytes()))
}

fn inspect(file: &Path) -> Result<(), CliError> {
    let (h, data_bytes) = read_backup(file, |_| Ok::<(), String>(()))?;
    println!("format_version: {}", h.format_version);
    println!("cluster_id: {}", h.cluster_id);
    println!("revision: {}", h.revision);
    println!("index: {}", h.index);
    println!(
        "created_at: {} (seconds since the Unix epoch)",
        h.created_at
    );
    println!("data_bytes: {data_bytes}");
    println!("checksum: ok");
    Ok(())
}

fn restore(
    file: &Path,
    dir: &Path,
    name: &str,
    cluster_id: &str,
    initial_members: &str,
) -> Result<(), CliError> {
    crate::cluster::validate_name(name).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    if cluster_id.is_empty() {
        return Err(CliError::Usage("--cluster-id: must not be empty".into()));
    }
    let peers = crate::cluster::parse_initial_members(initial_members)
        .map_err(|e| CliError::Usage(format!("--initial-members: {e}")))?;
    let peer_url = match peers.as_slice() {
        [only] if only.name == name => only.peer_url.clone(),
        _ => {
            return Err(CliError::Usage(format!(
                "--initial-members: a restore seeds a one-member cluster: give only {name}=URL; \
                 start the other members with --join and add them"
            )));
        }
    };
    let existed = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(fatal(dir, "the data directory is not empty"));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(fatal(dir, e)),
    };
    // Checked whole before anything is written.
    let (header, _) = read_backup(file, |_| Ok::<(), String>(()))?;
    let result = seed(file, dir, name, cluster_id, &peer_url, &header);
    if result.is_err() {
        // Leave the directory as it was found: empty or absent.
        if existed {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let p = entry.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result?;
    println!(
        "restored revision {} (index {}) of cluster {} into {} as {name} of cluster {cluster_id}; \
         start it with phxkv serve --data-dir {} --name {name} --cluster-id {cluster_id} \
         --initial-members {name}={peer_url}",
        header.revision,
        header.index,
        header.cluster_id,
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Writes the identity, the one-member configuration and the snapshot.
fn seed(
    file: &Path,
    dir: &Path,
    name: &str,
    cluster_id: &str,
    peer_url: &str,
    header: &Header,
) -> Result<(), CliError> {
    let identity = Identity {
        node: name.to_string(),
        cluster: cluster_id.to_string(),
    };
    let mut disk = DiskStore::open(dir, &identity).map_err(|e| fatal(dir, e))?;
    let membership = bootstrap::membership(&[MemberRecord {
        name: name.to_string(),
        id: bootstrap::format_id(disk.incarnation().id),
        peer_url: peer_url.to_string(),
        voter: true,
    }])
    .map_err(|e| fatal(dir, e))?;
    let meta = SnapshotMeta {
        index: header.index,
        membership: membership.clone(),
    };
    let mut writer = Writer::create(&disk.snapshot_dir(), &meta).map_err(|e| fatal(dir, e))?;
    let (again, _) = read_backup(file, |piece| writer.write(piece))?;
    if &again != header {
        return Err(fatal(file, "the file changed while it was being restored"));
    }
    let sealed = writer.seal().map_err(|e| fatal(dir, e))?;
    // The image must be a store, at the index and revision it claims.
    let reader = Reader::open(sealed.path()).map_err(|e| fatal(dir, e))?;
    let store = Store::restore_from_reader(reader, StoreConfig::default())
        .map_err(|e| fatal(file, format!("the backup's data is not a store: {e}")))?;
    if store.applied_index() != header.index || store.revision() != header.revision {
        return Err(fatal(
            file,
            format!(
                "the backup's data is at index {} revision {}, its header says {} and {}",
                store.applied_index(),
                store.revision(),
                header.index,
                header.revision
            ),
        ));
    }
    drop(store);
    sealed.publish().map_err(|e| fatal(dir, e))?;
    disk.snapshot_stored(&meta).map_err(|e| fatal(dir, e))?;
    disk.record_bootstrap(&membership)
        .map_err(|e| fatal(dir, e))?;
    Ok(())
}
