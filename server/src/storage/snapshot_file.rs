//! Snapshot files: the state machine image with the log position it
//! reflects, one file per snapshot, checksummed end to end.
//!
//! ```text
//! file := MAGIC meta_len:u32le meta[meta_len] data_len:u64le data[data_len] checksum:u64le
//! checksum = xxh3_64 of every byte before it
//! ```
//!
//! A snapshot is written under a temporary name, synced, renamed into place
//! and the directory synced, so a crash leaves either the old snapshot or the
//! new one, never half of one. Files are named by their index, so the newest
//! is found without opening any.
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
    let mut w = Writer::create(dir, meta, data.len() as u64)?;
    for chunk in data.chunks(CHUNK) {
        w.write(chunk)?;
    }
    w.finish()
}

/// A snapshot file being written piece by piece; nothing is visible under
/// the final name until [`Writer::finish`] succeeds.
pub struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    index: Index,
    out: BufWriter<File>,
    hasher: Xxh3,
    remaining: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("tmp", &self.tmp)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts a snapshot file for `meta` whose data will be `len` bytes.
    pub fn create(dir: &Path, meta: &SnapshotMeta, len: u64) -> Result<Writer, StorageError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join(format!("{:020}{TMP_SUFFIX}", meta.index));
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
            out: BufWriter::with_capacity(CHUNK, file),
            hasher: Xxh3::new(),
            remaining: len,
        };
        w.put(MAGIC)?;
        w.put(&meta_len.to_le_bytes())?;
        w.put(&meta_bytes)?;
        w.put(&len.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).map_err(io(&self.tmp))
    }

    /// Appends the next piece of the state machine data.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        let n = chunk.len() as u64;
        if n > self.remaining {
            return Err(StorageError::Corrupt(format!(
                "snapshot data is longer than the {} bytes announced",
                self.remaining
            )));
        }
        self.remaining -= n;
        self.put(chunk)
    }

    /// Seals the file and makes it the newest snapshot, durably.
    pub fn finish(mut self) -> Result<PathBuf, StorageError> {
        if self.remaining != 0 {
            return Err(StorageError::Corrupt(format!(
                "snapshot data ended {} bytes short of its announced length",
                self.remaining
            )));
        }
        let sum = self.hasher.digest();
        self.out
            .write_all(&sum.to_le_bytes())
            .map_err(io(&self.tmp))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| io(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&self.tmp))?;
        drop(file);
        let path = self.dir.join(format!("{:020}{SUFFIX}", self.index));
        std::fs::rename(&self.tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        remove_all_but(&self.dir, &path)?;
        Ok(path)
    }
}

/// Deletes every snapshot and temporary file in `dir` except `keep`.
fn remove_all_but(dir: &Path, keep: &Path) -> Result<(), StorageError> {
    let mut removed = false;
    for item in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = item.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path != keep && (name.ends_with(SUFFIX) || name.ends_with(TMP_SUFFIX)) {
            std::fs::remove_file(&path).map_err(io(&path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Removes what a crash in the middle of writing a snapshot left behind.
pub(super) fn tidy(dir: &Path) -> Result<(), StorageError> {
    match latest(dir)? {
        Some((_, keep)) => remove_all_but(dir, &keep),
        None if dir.exists() => remove_all_but(dir, &dir.join("-")),
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
    remaining: u64,
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
        let mut r = Reader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(CHUNK, file),
            hasher: Xxh3::new(),
            meta: SnapshotMeta {
                index: 0,
                membership: Default::default(),
            },
            remaining: 0,
        };
        let mut magic = [0; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(r.corrupt("not a snapshot file (wrong header)"));
        }
        let mut len4 = [0; 4];
        r.take(&mut len4)?;
        let meta_len = u32::from_le_bytes(len4);
        if meta_len > MAX_META {
            return Err(r.corrupt("its meta is implausibly large"));
        }
        let mut meta = vec![0; meta_len as usize];
        r.take(&mut meta)?;
        r.meta = postcard::from_bytes(&meta)
            .map_err(|e| r.corrupt(&format!("its meta does not decode: {e}")))?;
        let mut len8 = [0; 8];
        r.take(&mut len8)?;
        r.remaining = u64::from_le_bytes(len8);
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

    fn take(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
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
        self.take(&mut chunk)?;
        self.remaining -= n as u64;
        Ok(Some(chunk))
    }

    /// Reads all of the data, checksum verified.
    pub fn read_to_end(mut self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let mut data = Vec::with_capacity(usize::try_from(self.remaining).unwrap_or(0));
        while let Some(chunk) = self.next_chunk(CHUNK)? {
            data.extend_from_slice(&chunk);
        }
        Ok((self.meta, data))
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
        let (m, d) = Reader::open(&path)
            .expect("open")
            .read_to_end()
            .expect("read");
        assert_eq!((m, d), (meta(9), data));
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
            let result = Reader::open(&path).and_then(Reader::read_to_end);
            assert!(
                matches!(&result, Err(StorageError::Corrupt(_))),
                "byte {at}: {result:?}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 3]).expect("write");
        let result = Reader::open(&path).and_then(Reader::read_to_end);
        assert!(matches!(&result, Err(StorageError::Corrupt(m)) if m.contains("cut short")));
    }

    #[test]
    fn a_writer_refuses_more_or_less_data_than_announced() {
        let tmp = TempDir::new().expect("tempdir");
        let mut w = Writer::create(tmp.path(), &meta(1), 3).expect("create");
        assert!(w.write(b"abcd").is_err());
        let w = Writer::create(tmp.path(), &meta(1), 3).expect("create");
        assert!(w.finish().is_err());
        assert_eq!(
            latest(tmp.path()).expect("list"),
            None,
            "nothing half-written is visible"
        );
    }
}
