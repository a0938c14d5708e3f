//! Snapshot files: the state machine image with the log position it
//! reflects, one file per snapshot, checksummed end to end.
//!
//! ```text
//! file := MAGIC meta_len:u32le meta[meta_len] data checksum:u64le
//! checksum = xxh3_64 of every byte before it
//! ```
//!
//! The data runs to the checksum, so a snapshot can be written as it is
//! produced, without knowing its length first. It is written under a
//! temporary name, synced, renamed into place and the directory synced, so a
//! crash leaves either the old snapshot or the new one, never half of one.
//! Files are named by their index, so the newest is found without opening
//! any; a newer file is never deleted to make room for an older one (a
//! snapshot taken here and one received from the master may race).
//!
//! Reading and writing go through bounded buffers: a snapshot is never
//! required to be in memory as one piece to be stored or checked.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use super::StorageError;
use super::wal::{io, sync_dir};
use crate::paxos::{Index, SnapshotMeta};

const MAGIC: &[u8; 8] = b"PHXSNAP\x01";
const DIR: &str = "snapshots";
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";
/// Tells apart the temporary files of snapshots written at the same time.
static TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Buffer size for reading and writing snapshot files.
const CHUNK: usize = 256 << 10;
/// A snapshot's meta is a configuration: small. Anything larger is damage.
const MAX_META: u32 = 16 << 20;

/// The directory snapshots live in, inside a data directory.
pub fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// The newest snapshot file in `dir` and its index, if there is one.
pub fn latest(dir: &Path) -> Result<Option<(Index, PathBuf)>, StorageError> {
    Ok(list(dir)?.pop())
}

/// Every snapshot file in `dir` by index, oldest first.
fn list(dir: &Path) -> Result<Vec<(Index, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(dir)(e)),
    };
    for item in entries {
        let item = item.map_err(io(dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(index) = name.strip_suffix(SUFFIX).and_then(|n| n.parse().ok()) {
            found.push((index, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a snapshot durably as the newest file in `dir`, then deletes the
/// older ones (and any temporary file a crash left behind).
pub fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<PathBuf, StorageError> {
    let mut w = Writer::create(dir, meta)?;
    for chunk in data.chunks(CHUNK) {
        w.write(chunk)?;
    }
    w.seal()?.publish()
}

/// A snapshot file being written piece by piece; nothing is visible under
/// the final name until it is sealed and published. Dropped before that,
/// it leaves nothing behind.
pub struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    index: Index,
    out: Option<BufWriter<File>>,
    hasher: Xxh3,
    written: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("tmp", &self.tmp)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Writer {
    /// Starts a snapshot file for `meta` in `dir`.
    pub fn create(dir: &Path, meta: &SnapshotMeta) -> Result<Writer, StorageError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let seq = TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            "{:020}.{}-{seq}{TMP_SUFFIX}",
            meta.index,
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let meta_bytes = postcard::to_stdvec(meta)
            .map_err(|e| StorageError::Corrupt(format!("cannot encode snapshot meta: {e}")))?;
        let meta_len = u32::try_from(meta_bytes.len())
            .ok()
            .filter(|l| *l <= MAX_META)
            .ok_or_else(|| StorageError::Corrupt("snapshot meta is too large".into()))?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            tmp,
            index: meta.index,
            out: Some(BufWriter::with_capacity(CHUNK, file)),
            hasher: Xxh3::new(),
            written: 0,
        };
        w.put(MAGIC)?;
        w.put(&meta_len.to_le_bytes())?;
        w.put(&meta_bytes)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.hasher.update(bytes);
        match self.out.as_mut() {
            Some(out) => out.write_all(bytes).map_err(io(&self.tmp)),
            None => Err(StorageError::Corrupt(
                "snapshot writer already sealed".into(),
            )),
        }
    }

    /// Appends the next piece of the state machine data.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.written += chunk.len() as u64;
        self.put(chunk)
    }

    /// Data bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes the checksum and syncs the file, still under its temporary
    /// name: it can be read back (and checked) before it is published.
    pub fn seal(mut self) -> Result<Sealed, StorageError> {
        let sum = self.hasher.digest();
        let mut out = self
            .out
            .take()
            .ok_or_else(|| StorageError::Corrupt("snapshot writer already sealed".into()))?;
        let tmp = std::mem::take(&mut self.tmp);
        let sealed = (|| {
            out.write_all(&sum.to_le_bytes()).map_err(io(&tmp))?;
            let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
            file.sync_all().map_err(io(&tmp))
        })();
        if let Err(e) = sealed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Sealed {
            dir: std::mem::take(&mut self.dir),
            tmp,
            index: self.index,
            published: false,
        })
    }
}

/// A complete, synced snapshot file not yet under its final name. Dropped
/// unpublished, it is deleted.
#[derive(Debug)]
pub struct Sealed {
    dir: PathBuf,
    tmp: PathBuf,
    index: Index,
    published: bool,
}

impl Sealed {
    /// The file as it is now, for reading it back before publishing.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The index of the snapshot in it.
    pub fn index(&self) -> Index {
        self.index
    }

    /// Makes the file the snapshot at its index, durably, and deletes older
    /// snapshot files. Returns its final path.
    pub fn publish(mut self) -> Result<PathBuf, StorageError> {
        let path = self.dir.join(format!("{:020}{SUFFIX}", self.index));
        std::fs::rename(&self.tmp, &path).map_err(io(&path))?;
        self.published = true;
        sync_dir(&self.dir)?;
        remove_older(&self.dir, self.index)?;
        Ok(path)
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Deletes the snapshot files in `dir` older than `index`.
fn remove_older(dir: &Path, index: Index) -> Result<(), StorageError> {
    let mut removed = false;
    for (i, path) in list(dir)? {
        if i < index {
            std::fs::remove_file(&path).map_err(io(&path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Removes what a crash left behind: temporary files, and snapshot files
/// older than the newest. Only for a directory no one is writing to.
pub(super) fn tidy(dir: &Path) -> Result<(), StorageError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut removed = false;
    for item in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = item.map_err(io(dir))?.path();
        if path.to_str().is_some_and(|n| n.ends_with(TMP_SUFFIX)) {
            std::fs::remove_file(&path).map_err(io(&path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    match latest(dir)? {
        Some((index, _)) => remove_older(dir, index),
        None => Ok(()),
    }
}

/// A snapshot file open for reading: its meta is parsed, its data is read
/// in pieces, and the checksum is verified once the last piece is read.
pub struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    hasher: Xxh3,
    meta: SnapshotMeta,
    /// Data bytes not read yet.
    remaining: u64,
    /// The checksum was read and matched.
    verified: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Reader, StorageError> {
        let file = File::open(path).map_err(io(path))?;
        let file_len = file.metadata().map_err(io(path))?.len();
        let mut r = Reader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(CHUNK, file),
            hasher: Xxh3::new(),
            meta: SnapshotMeta {
                index: 0,
                membership: Default::default(),
            },
            remaining: 0,
            verified: false,
        };
        let mut magic = [0; 8];
        r.fill_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(r.corrupt("not a snapshot file (wrong header)"));
        }
        let mut len4 = [0; 4];
        r.fill_exact(&mut len4)?;
        let meta_len = u32::from_le_bytes(len4);
        if meta_len > MAX_META {
            return Err(r.corrupt("its meta is implausibly large"));
        }
        let mut meta = vec![0; meta_len as usize];
        r.fill_exact(&mut meta)?;
        r.meta = postcard::from_bytes(&meta)
            .map_err(|e| r.corrupt(&format!("its meta does not decode: {e}")))?;
        let header = (MAGIC.len() + 4) as u64 + u64::from(meta_len);
        r.remaining = file_len
            .checked_sub(header + 8)
            .ok_or_else(|| r.corrupt("is cut short"))?;
        Ok(r)
    }

    /// What the snapshot covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The length of the state machine data.
    pub fn data_len(&self) -> u64 {
        self.remaining
    }

    fn corrupt(&self, what: &str) -> StorageError {
        StorageError::Corrupt(format!("snapshot file {} {what}", self.path.display()))
    }

    fn fill_exact(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.hasher.update(buf);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt("is cut short"))
            }
            Err(e) => Err(io(&self.path)(e)),
        }
    }

    /// The next piece of data (at most `max` bytes), or `None` once all of
    /// it was read and the checksum matched.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>, StorageError> {
        if self.remaining == 0 {
            let mut sum = [0; 8];
            match self.input.read_exact(&mut sum) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(self.corrupt("is cut short"));
                }
                Err(e) => return Err(io(&self.path)(e)),
            }
            if u64::from_le_bytes(sum) != self.hasher.digest() {
                return Err(self.corrupt("fails its checksum"));
            }
            return Ok(None);
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(max);
        let mut chunk = vec![0; n];
        self.fill_exact(&mut chunk)?;
        self.remaining -= n as u64;
        Ok(Some(chunk))
    }

    /// Reads all of the data, checksum verified.
    pub fn read_all(mut self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let mut data = Vec::with_capacity(usize::try_from(self.remaining).unwrap_or(0));
        while let Some(chunk) = self.next_chunk(CHUNK)? {
            data.extend_from_slice(&chunk);
        }
        Ok((self.meta, data))
    }
}

/// The data as a byte stream; the end of the stream is reported only once
/// the checksum matched (a mismatch is an `InvalidData` error instead).
impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            if !self.verified {
                self.next_chunk(0)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                self.verified = true;
            }
            return Ok(0);
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.input.read(&mut buf[..n])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                self.corrupt("is cut short"),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl Reader {
    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    fn meta(index: Index) -> SnapshotMeta {
        SnapshotMeta {
            index,
            membership: Default::default(),
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written_and_replaces_the_older_one() {
        let tmp = TempDir::new().expect("tempdir");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        write(tmp.path(), &meta(4), b"old").expect("write");
        let path = write(tmp.path(), &meta(9), &data).expect("write");
        assert_eq!(latest(tmp.path()).expect("list"), Some((9, path.clone())));
        assert_eq!(
            list(tmp.path()).expect("list").len(),
            1,
            "the old one is gone"
        );
        let (m, d) = Reader::open(&path).expect("open").read_all().expect("read");
        assert_eq!((m, d), (meta(9), data));
    }

    #[test]
    fn reading_as_a_stream_checks_the_checksum_at_the_end() {
        let tmp = TempDir::new().expect("tempdir");
        let path = write(tmp.path(), &meta(3), b"0123456789").expect("write");
        let mut out = Vec::new();
        Reader::open(&path)
            .expect("open")
            .read_to_end(&mut out)
            .expect("read");
        assert_eq!(out, b"0123456789");
        let mut bad = std::fs::read(&path).expect("read");
        let at = bad.len() - 9;
        bad[at] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        let err = Reader::open(&path)
            .expect("open")
            .read_to_end(&mut Vec::new())
            .expect_err("damage is an error");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_the_checksum() {
        let tmp = TempDir::new().expect("tempdir");
        let path = write(tmp.path(), &meta(3), b"some state machine bytes").expect("write");
        let good = std::fs::read(&path).expect("read");
        for at in [0, 9, 14, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).expect("write");
            let result = Reader::open(&path).and_then(Reader::read_all);
            assert!(
                matches!(&result, Err(StorageError::Corrupt(_))),
                "byte {at}: {result:?}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 3]).expect("write");
        let result = Reader::open(&path).and_then(Reader::read_all);
        assert!(
            matches!(&result, Err(StorageError::Corrupt(_))),
            "{result:?}"
        );
    }

    #[test]
    fn an_unpublished_snapshot_leaves_nothing_behind() {
        let tmp = TempDir::new().expect("tempdir");
        let mut w = Writer::create(tmp.path(), &meta(1)).expect("create");
        w.write(b"abcd").expect("write");
        drop(w);
        let mut w = Writer::create(tmp.path(), &meta(2)).expect("create");
        w.write(b"abcd").expect("write");
        let sealed = w.seal().expect("seal");
        let (m, d) = Reader::open(sealed.path())
            .and_then(Reader::read_all)
            .expect("a sealed file reads back");
        assert_eq!((m, d), (meta(2), b"abcd".to_vec()));
        drop(sealed);
        assert_eq!(std::fs::read_dir(tmp.path()).expect("list").count(), 0);
    }

    #[test]
    fn an_older_snapshot_published_late_never_replaces_a_newer_one() {
        let tmp = TempDir::new().expect("tempdir");
        let mut old = Writer::create(tmp.path(), &meta(5)).expect("create");
        old.write(b"old").expect("write");
        write(tmp.path(), &meta(9), b"new").expect("write");
        old.seal().expect("seal").publish().expect("publish");
        let (index, path) = latest(tmp.path()).expect("list").expect("one");
        assert_eq!(index, 9);
        let (_, data) = Reader::open(&path)
            .and_then(Reader::read_all)
            .expect("read");
        assert_eq!(data, b"new");
        tidy(tmp.path()).expect("tidy");
        assert_eq!(list(tmp.path()).expect("list").len(), 1);
    }
}
