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
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::ConnectArgs;
use super::http::{self, Client};
use crate::archive::restore::{self as archive_restore, Target};
use crate::archive::{Catalog, Location, Segment as ArchivedSegment};
use crate::cli::CliError;
use crate::cluster::bootstrap::{self, MemberRecord};
use crate::kv::timeline::Timeline;
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
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List the base snapshots in the cluster's archive (the node's
    /// --archive-url), the stretches a restore can reach and how far the
    /// archive is behind. Needs the cluster token.
    List {
        #[command(flatten)]
        output: super::OutputArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Take a base snapshot into the cluster's archive now; prints it once
    /// it is stored (minutes for a large store). Needs the cluster token.
    Take {
        #[command(flatten)]
        output: super::OutputArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a base snapshot from the archive, by the name `list` shows,
    /// and the log segments no remaining base needs. The newest base is
    /// refused: take a new one first. Needs the cluster token.
    Delete {
        /// The base's name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print a backup's header and verify its checksum.
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
    /// Seed the data directory of the first member of a NEW cluster from a
    /// backup file or from an archive: keys, versions and revisions as they
    /// were. Then start it with `phxkv serve` and the same --data-dir,
    /// --cluster-id and --initial-members, this --name as its --id, and its
    /// --listen, --peer-listen and --cluster-token-file; further members start
    /// with --join and are added (`phxkv members add`), and catch up from it.
    Restore {
        /// The backup file (or give --from-archive instead).
        // The options that apply to an archive only conflict with it (clap
        // does not check a `requires` on an argument whose partner
        // conflicts with another).
        #[arg(
            required_unless_present = "from_archive",
            conflicts_with = "from_archive"
        )]
        file: Option<PathBuf>,
        /// Restore from this archive (`s3://bucket/prefix` or
        /// `file:///dir`, what the cluster ran with --archive-url): its
        /// newest base before the target, then the log up to the target.
        /// S3 credentials as for `phxkv serve --archive-url`.
        #[arg(long, value_name = "URL")]
        from_archive: Option<String>,
        /// With --from-archive: a file of AWS_*=value lines.
        #[arg(
            long,
            env = "PHXKV_ARCHIVE_CREDENTIALS_FILE",
            value_name = "PATH",
            conflicts_with = "file"
        )]
        archive_credentials_file: Option<PathBuf>,
        /// With --from-archive: restore exactly the writes with revision at
        /// most R (default: everything the archive holds).
        #[arg(
            long,
            value_name = "R",
            conflicts_with_all = ["file", "target_time"]
        )]
        target_revision: Option<u64>,
        /// With --from-archive: restore the writes the cluster applied at
        /// or before this time (RFC 3339, e.g. 2026-12-01T10:00:00Z, or
        /// seconds since the Unix epoch), as the master's clock saw it.
        #[arg(long, value_name = "TIME", conflicts_with = "file",
              value_parser = parse_time)]
        target_time: Option<u64>,
        /// The new member's data directory; must be empty or absent.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Do nothing, successfully, when the data directory already holds
        /// data (for a container that restores before every start).
        #[arg(long)]
        if_empty: bool,
        /// Restore only if --name is this member; otherwise (an empty value
        /// included) do nothing, successfully. For a container every member
        /// runs, where only the first member of the new cluster restores.
        #[arg(long, value_name = "NAME")]
        only_member: Option<String>,
        /// The new member's name (its --id when serving).
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

/// A point of the archive, as `list` prints it.
fn point(p: &crate::archive::Point) -> String {
    format!(
        "revision {} ({})",
        p.revision,
        chrono::DateTime::from_timestamp(i64::try_from(p.time).unwrap_or(0), 0).map_or_else(
            || p.time.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        )
    )
}

/// What `backup list` prints for people.
fn render_archive(list: &crate::api::service::BackupList) -> String {
    let mut out = format!("archive {}\n", list.archive_url);
    if list.backups.is_empty() {
        out.push_str("no base snapshots yet\n");
    }
    for b in &list.backups {
        out.push_str(&format!(
            "base {}  {}  {} bytes\n",
            b.name,
            point(&crate::archive::Point {
                revision: b.revision,
                index: b.index,
                time: b.created_at,
            }),
            b.bytes
        ));
    }
    for (i, r) in list.recoverable_ranges.iter().enumerate() {
        if i > 0 {
            out.push_str("  (a gap: the points between cannot be restored)\n");
        }
        out.push_str(&format!(
            "recoverable from {} to {}\n",
            point(&r.first),
            point(&r.last)
        ));
    }
    if let Some(lag) = list.archive_lag {
        out.push_str(&format!("archive lag: {lag} entries\n"));
    }
    if let Some(e) = &list.archive_error {
        out.push_str(&format!("archiver's last error: {e}\n"));
    }
    out
}

async fn list_archive(connect: &ConnectArgs, format: super::Output) -> Result<(), CliError> {
    let client = Client::new(connect)?;
    let resp = client
        .send(|h, base| h.get(format!("{base}/v1/admin/backups")))
        .await?;
    let list: crate::api::service::BackupList = http::json(http::check(resp).await?).await?;
    match format {
        super::Output::Json => super::print_json(&list),
        _ => super::write_out(render_archive(&list).as_bytes()),
    }
}

async fn take_base(connect: &ConnectArgs, format: super::Output) -> Result<(), CliError> {
    let client = Client::new(connect)?;
    let send = client.send_streaming(|h, base| h.post(format!("{base}/v1/admin/backups")));
    tokio::pin!(send);
    // Said only once the snapshot is under way: a refusal (no archive, no
    // credential) comes at once, as its one line.
    let resp = tokio::select! {
        resp = &mut send => resp?,
        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
            crate::cli::tell!("taking a base snapshot into the archive (minutes for a large store)");
            send.await?
        }
    };
    let base: crate::archive::Base = http::json(http::check(resp).await?).await?;
    match format {
        super::Output::Json => super::print_json(&base),
        _ => super::write_line(&format!(
            "stored base {} at revision {} ({} bytes)",
            base.name, base.revision, base.bytes
        )),
    }
}

async fn delete_base(connect: &ConnectArgs, name: &str) -> Result<(), CliError> {
    let client = Client::new(connect)?;
    let path = format!("/v1/admin/backups/{}", super::path_segment(name.as_bytes()));
    let resp = client
        .send(|h, base| h.delete(format!("{base}{path}")))
        .await?;
    http::check(resp).await?;
    super::write_line(&format!("deleted base {name}"))
}

/// A time as milliseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return secs
            .checked_mul(1000)
            .ok_or_else(|| format!("{s}: too large"));
    }
    let at = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
        format!("{s}: expected RFC 3339 (2026-12-01T10:00:00Z) or Unix seconds ({e})")
    })?;
    u64::try_from(at.timestamp_millis()).map_err(|_| format!("{s}: before 1970"))
}

/// Runs `phxkv backup`.
pub async fn run(args: BackupArgs) -> Result<(), CliError> {
    match args.action {
        BackupAction::Save {
            file,
            force,
            connect,
        } => save(&file, force, &connect).await,
        BackupAction::Inspect { file } => inspect(&file),
        BackupAction::List { output, connect } => list_archive(&connect, output.format()).await,
        BackupAction::Take { output, connect } => take_base(&connect, output.format()).await,
        BackupAction::Delete { name, connect } => delete_base(&connect, &name).await,
        BackupAction::Restore {
            file,
            from_archive,
            archive_credentials_file,
            target_revision,
            target_time,
            data_dir,
            if_empty,
            only_member,
            name,
            cluster_id,
            initial_members,
        } => {
            let member = NewMember {
                dir: data_dir,
                name,
                cluster_id,
                initial_members,
                if_empty,
                only_member,
            };
            match (file, from_archive) {
                (Some(file), _) => restore(&file, &member, None).await,
                (None, Some(url)) => {
                    let target = match (target_revision, target_time) {
                        (Some(r), _) => Target::Revision(r),
                        (None, Some(t)) => Target::Time(t),
                        (None, None) => Target::Latest,
                    };
                    restore_archive(&url, archive_credentials_file.as_deref(), target, &member)
                        .await
                }
                (None, None) => Err(CliError::Usage(
                    "give a backup FILE or --from-archive URL".into(),
                )),
            }
        }
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
        crate::cli::tell_part!("\rsaving: {mib:.1} MiB{}", if done { "\n" } else { "" });
    }
}

async fn save(file: &Path, force: bool, connect: &ConnectArgs) -> Result<(), CliError> {
    if file.exists() && !force {
        return Err(CliError::Usage(format!(
            "{}: already exists; pass --force to replace it",
            file.display()
        )));
    }
    let client = Client::new(connect)?;
    let resp = client
        .send_streaming(|h, base| h.get(format!("{base}/v1/admin/snapshot")))
        .await?;
    let mut resp = http::check(resp).await?;
    let mut tmp_name = file.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = async {
        // Every key and value of the cluster: for its owner's eyes only.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fatal(&tmp, e))?;
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
            crate::cli::say!(
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
    // A file that cannot be opened is the caller's to fix (exit 2), as for
    // every other file named on the command line.
    let mut input =
        File::open(file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
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
    crate::cli::say!("format_version: {}", h.format_version);
    crate::cli::say!("cluster_id: {}", h.cluster_id);
    crate::cli::say!("revision: {}", h.revision);
    crate::cli::say!("index: {}", h.index);
    // Unix seconds first, for scripts; then the time for people.
    let when = i64::try_from(h.created_at)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .map_or_else(
            || "out of range".to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    crate::cli::say!("created_at: {} ({when})", h.created_at);
    crate::cli::say!("data_bytes: {data_bytes}");
    crate::cli::say!("checksum: ok");
    Ok(())
}

/// Where a restore puts the new cluster's first member.
#[derive(Debug)]
struct NewMember {
    dir: PathBuf,
    name: String,
    cluster_id: String,
    initial_members: String,
    if_empty: bool,
    only_member: Option<String>,
}

/// Checks the arguments; the member's peer URL, or `None` when the
/// directory holds data and `--if-empty` says to leave it.
fn check_member(m: &NewMember) -> Result<Option<String>, CliError> {
    crate::cluster::validate_name(&m.name).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    if m.cluster_id.is_empty() {
        return Err(CliError::Usage("--cluster-id: must not be empty".into()));
    }
    if let Some(only) = &m.only_member
        && *only != m.name
    {
        crate::cli::say!(
            "nothing restored: this is {}, the restore is for {} (--only-member)",
            m.name,
            if only.is_empty() { "no member" } else { only }
        );
        return Ok(None);
    }
    let peers = crate::cluster::parse_initial_members(&m.initial_members)
        .map_err(|e| CliError::Usage(format!("--initial-members: {e}")))?;
    let peer_url = match peers.as_slice() {
        [only] if only.name == m.name => only.peer_url.clone(),
        _ => {
            return Err(CliError::Usage(format!(
                "--initial-members: a restore seeds a one-member cluster: give only {}=URL; \
                 start the other members with --join and add them",
                m.name
            )));
        }
    };
    match std::fs::read_dir(&m.dir) {
        Ok(entries) => {
            if entries
                .flatten()
                .any(|e| !belongs_to_the_volume(&e.file_name()))
            {
                if m.if_empty {
                    crate::cli::say!(
                        "{} already holds data; nothing restored (--if-empty)",
                        m.dir.display()
                    );
                    return Ok(None);
                }
                return Err(fatal(&m.dir, "the data directory is not empty"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fatal(&m.dir, e)),
    }
    Ok(Some(peer_url))
}

/// What a mount point holds of its own, not data: `lost+found`, and
/// hidden entries (a volume's `.snapshot` folder, say). A data directory
/// holding only these counts as empty, as `phxkv serve` counts it.
fn belongs_to_the_volume(name: &std::ffi::OsStr) -> bool {
    name == "lost+found" || name.as_encoded_bytes().starts_with(b".")
}

/// Leaves the directory as it was found, empty or absent, after a failure.
fn clean_up(dir: &Path, existed: bool) {
    if existed {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if belongs_to_the_volume(&entry.file_name()) {
                    continue;
                }
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

/// `.NAME.WHAT` next to `dir`, on the same file system.
fn sibling(dir: &Path, what: &str) -> Result<PathBuf, CliError> {
    match dir.file_name() {
        Some(name) => Ok(dir.with_file_name(format!(".{}.{what}", name.to_string_lossy()))),
        None => Err(CliError::Usage("--data-dir: give a directory".into())),
    }
}

/// Moves the seeded `staging` directory to `dir` (absent or empty): one
/// rename, or, when `dir` cannot be replaced (a mount point), its entries
/// one by one with the identity file last.
fn move_into_place(staging: &Path, dir: &Path) -> Result<(), CliError> {
    let sync = |d: &Path| {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| fatal(d, e))
    };
    sync(staging)?;
    if dir.exists() && std::fs::remove_dir(dir).is_err() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(staging)
            .map_err(|e| fatal(staging, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| fatal(staging, e))?;
        entries.sort_by_key(|p| p.file_name().is_some_and(|n| n == "identity.json"));
        for from in entries {
            let to = dir.join(from.file_name().unwrap_or_default());
            std::fs::rename(&from, &to).map_err(|e| fatal(&to, e))?;
        }
        std::fs::remove_dir(staging).map_err(|e| fatal(staging, e))?;
        return sync(dir);
    }
    std::fs::rename(staging, dir).map_err(|e| fatal(dir, e))?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync(parent),
        None => sync(Path::new(".")),
    }
}

/// Restores from a backup file; with `replay`, then replays an archive's
/// log onto it.
async fn restore(
    file: &Path,
    m: &NewMember,
    replay: Option<(&Location, &str, &[ArchivedSegment], Target)>,
) -> Result<(), CliError> {
    let Some(peer_url) = check_member(m)? else {
        return Ok(());
    };
    let existed = m.dir.exists();
    // Checked whole before anything is written.
    let (header, _) = read_backup(file, |_| Ok::<(), String>(()))?;
    // Seeded beside the directory and moved into place once complete, so a
    // restore killed half-way never leaves a directory that looks restored
    // (`--if-empty` would then skip it, and the member would start empty).
    let staging = sibling(&m.dir, "restoring")?;
    let _ = std::fs::remove_dir_all(&staging);
    let result = async {
        let done = seed(file, &staging, m, &peer_url, &header, replay).await?;
        move_into_place(&staging, &m.dir)?;
        Ok::<_, CliError>(done)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        clean_up(&m.dir, existed);
    }
    let (index, revision, timeline) = result?;
    crate::cli::say!(
        "restored revision {revision} (index {index}) of cluster {} into {} as {} of cluster {}, \
         on {}; start it with phxkv serve --id {} --data-dir {} --cluster-id {} \
         --initial-members {}={peer_url} (with its --listen, --peer-listen and \
         --cluster-token-file)",
        header.cluster_id,
        m.dir.display(),
        m.name,
        m.cluster_id,
        timeline.describe(),
        m.name,
        m.dir.display(),
        m.cluster_id,
        m.name,
    );
    Ok(())
}

/// An archive's error, as one line (see [`crate::archive::location::tidy_error`]).
/// A credential the object store refused, or none found, exits 2 like a
/// refused token (see the exit codes in `phxkv --help`); anything else 4.
fn archive_error(message: String) -> CliError {
    let line = crate::archive::location::tidy_error(&message);
    const REFUSED: [&str; 6] = [
        "S3 error AccessDenied",
        "S3 error InvalidAccessKeyId",
        "S3 error SignatureDoesNotMatch",
        "S3 error ExpiredToken",
        "S3 error InvalidToken",
        "no S3 credentials were found",
    ];
    if REFUSED.iter().any(|r| line.contains(r)) {
        CliError::Usage(line)
    } else {
        CliError::Fatal(line)
    }
}

/// Restores from an archive: the newest base before the target, then the
/// log up to it.
async fn restore_archive(
    url: &str,
    credentials: Option<&Path>,
    target: Target,
    m: &NewMember,
) -> Result<(), CliError> {
    if check_member(m)?.is_none() {
        return Ok(());
    }
    let loc = Location::open(url, credentials).map_err(archive_error)?;
    let catalog = Catalog::list(&loc).await.map_err(archive_error)?;
    let plan = archive_restore::plan(&catalog, target)
        .map_err(|e| CliError::Fatal(format!("{url}: {e}")))?;
    // The plan needs the marker; it names the cluster the archive is of.
    let cluster = catalog
        .marker
        .as_ref()
        .map(|m| m.cluster_id.clone())
        .unwrap_or_default();
    // Next to the data directory, on the same volume.
    let base_file = sibling(&m.dir, "restore-base")?;
    let _ = std::fs::remove_file(&base_file);
    if let Some(parent) = base_file.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| fatal(parent, e))?;
    }
    crate::cli::tell!(
        "restoring {target} from {url}: base {} (revision {}), then {} log segment(s)",
        plan.base.name,
        plan.base.revision,
        plan.segments.len()
    );
    let result = async {
        archive_restore::download(&loc, &plan.base.key(), &base_file)
            .await
            .map_err(archive_error)?;
        restore(
            &base_file,
            m,
            Some((&loc, &cluster, &plan.segments, target)),
        )
        .await
    }
    .await;
    let _ = std::fs::remove_file(&base_file);
    result
}

/// Writes the identity, the one-member configuration and the snapshot;
/// the index and revision restored.
async fn seed(
    file: &Path,
    dir: &Path,
    m: &NewMember,
    peer_url: &str,
    header: &Header,
    replay: Option<(&Location, &str, &[ArchivedSegment], Target)>,
) -> Result<(u64, u64, Timeline), CliError> {
    let identity = Identity {
        node: m.name.clone(),
        cluster: m.cluster_id.clone(),
    };
    let mut disk = DiskStore::open(dir, &identity).map_err(|e| fatal(dir, e))?;
    let membership = bootstrap::membership(&[MemberRecord {
        name: m.name.clone(),
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
    let mut store = Store::restore_from_reader(reader, StoreConfig::default())
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
    if let Some((loc, cluster, segments, target)) = replay {
        if header.cluster_id != cluster {
            return Err(CliError::Fatal(format!(
                "{}: its base is of cluster {}, the archive is cluster {cluster}'s",
                loc.url, header.cluster_id
            )));
        }
        let mut shown = Instant::now();
        let terminal = std::io::stderr().is_terminal();
        archive_restore::replay(
            loc,
            cluster,
            segments,
            target,
            &mut store,
            |index, revision| {
                if terminal && shown.elapsed() > Duration::from_millis(200) {
                    shown = Instant::now();
                    crate::cli::tell_part!("\rreplaying: index {index} revision {revision}");
                }
            },
        )
        .await
        .map_err(|e| archive_error(format!("{}: {e}", loc.url)))?;
        if terminal {
            crate::cli::tell!();
        }
    }
    // A restore starts a history of its own (see `crate::kv::timeline`):
    // the image written is the store with its new timeline, which every
    // member added later receives from this one.
    drop(sealed);
    let timeline = store.fork_timeline(&Timeline::new_id());
    let restored = (store.applied_index(), store.revision(), timeline);
    let meta = SnapshotMeta {
        index: store.applied_index(),
        membership: membership.clone(),
    };
    let mut writer = Writer::create(&disk.snapshot_dir(), &meta).map_err(|e| fatal(dir, e))?;
    let start = store.begin_snapshot();
    writer.write(&start.head).map_err(|e| fatal(dir, e))?;
    let mut piece = Vec::new();
    loop {
        piece.clear();
        let done = store
            .snapshot_chunk(start.id, 4096, &mut piece)
            .map_err(|e| fatal(dir, e))?;
        writer.write(&piece).map_err(|e| fatal(dir, e))?;
        if done {
            break;
        }
    }
    writer
        .seal()
        .and_then(|s| s.publish())
        .map_err(|e| fatal(dir, e))?;
    disk.snapshot_stored(&meta).map_err(|e| fatal(dir, e))?;
    disk.record_bootstrap(&membership)
        .map_err(|e| fatal(dir, e))?;
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_or_missing_s3_credential_exits_2_and_other_archive_errors_4() {
        let s3 = |code: &str, status: &str| {
            format!(
                "listing archive s3://b/p: Generic S3 error: Error performing GET http://h/b \
                 in 3ms - Server returned non-2xx status code: {status}: <?xml \
                 version=\"1.0\"?>\n<Error><Code>{code}</Code><Message>m</Message></Error>"
            )
        };
        for code in [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ] {
            let e = archive_error(s3(code, "403 Forbidden"));
            assert_eq!(e.exit_code(), 2, "{code}: {e}");
            assert!(e.to_string().contains(code), "{e}");
        }
        let none = archive_error(
            "listing archive s3://b/p: Generic S3 error: Error performing PUT \
             http://169.254.169.254/latest/api/token in 1ms - Server returned non-2xx status \
             code: 403 Forbidden: denied"
                .into(),
        );
        assert_eq!(none.exit_code(), 2, "{none}");
        let missing = archive_error(s3("NoSuchBucket", "404 Not Found"));
        assert_eq!(missing.exit_code(), 4, "{missing}");
    }
}
