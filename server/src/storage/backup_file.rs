//! Backup files: a consistent image of the state machine as the admin API
//! streams it (`GET /v1/admin/snapshot`) and `phxkv backup` saves, checks
//! and restores it.
//!
//! ```text
//! file    := MAGIC version:u32le header_len:u32le header[header_len]
//!            frame* 0:u32le checksum:u64le
//! frame   := len:u32le data[len]          (len > 0)
//! header  := JSON [`Header`]
//! checksum = xxh3_64 of every byte before it
//! ```
//!
//! The data, all frames joined, is the store image in the very encoding of
//! a snapshot file's data ([`super::snapshot_file`]), so a restore writes it
//! into a snapshot file unchanged. The frames let the image be produced and
//! sent as it is encoded, without knowing its length first, and let a reader
//! tell a file cut short (no end frame, or no checksum) from a whole one.
//! The version comes before the header so that a file of a newer format is
//! refused before anything of it is interpreted.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"PHXBKUP\n";
/// The format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// A header is a handful of fields; anything larger is damage.
const MAX_HEADER: u32 = 64 << 10;
/// Writers send frames far smaller; anything larger is damage.
pub const MAX_FRAME: u32 = 16 << 20;
/// The data bytes a writer puts in one frame at most.
pub const FRAME_BYTES: usize = 1 << 20;

/// What a backup is of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Header {
    /// The format of the file ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The cluster it was taken from.
    pub cluster_id: String,
    /// The store revision it holds.
    pub revision: u64,
    /// The log index (applied instance) it reflects.
    pub index: u64,
    /// When it was taken, in seconds since the Unix epoch.
    pub created_at: u64,
}

/// Why a backup file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("not a phxkv backup file")]
    NotABackup,
    #[error(
        "backup format version {0} is not supported (this version reads {FORMAT_VERSION}): a \
         backup of a later version, or a damaged file"
    )]
    UnknownVersion(u32),
    #[error("the backup file is truncated")]
    Truncated,
    #[error("the backup file is corrupted ({0})")]
    Corrupt(String),
}

/// Produces the bytes of a backup, piece by piece.
pub struct Encoder {
    hasher: Xxh3,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// Starts a backup: returns the encoder and the file's first bytes.
    pub fn start(header: &Header) -> Result<(Encoder, Vec<u8>), String> {
        let json = serde_json::to_vec(header).map_err(|e| e.to_string())?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|l| *l <= MAX_HEADER)
            .ok_or("the backup header is too large")?;
        let mut out = Vec::with_capacity(16 + json.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&header.format_version.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&json);
        let mut hasher = Xxh3::new();
        hasher.update(&out);
        Ok((Encoder { hasher }, out))
    }

    /// Frames a piece of the data (split as needed); empty data gives
    /// nothing.
    pub fn data(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 8);
        for piece in data.chunks(FRAME_BYTES) {
            // A piece is at most FRAME_BYTES long: it fits.
            let len = piece.len() as u32;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(piece);
        }
        self.hasher.update(&out);
        out
    }

    /// The end frame and the checksum: the file's last bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let end = 0u32.to_le_bytes();
        self.hasher.update(&end);
        let mut out = end.to_vec();
        out.extend_from_slice(&self.hasher.digest().to_le_bytes());
        out
    }
}

enum State {
    /// Magic, version and header length.
    Preamble,
    Header(usize),
    FrameLen,
    Frame(u64),
    Checksum,
    Done,
}

/// Checks a backup as its bytes arrive, in any pieces, and hands the data
/// on as it goes; only small fixed fields are buffered.
pub struct Decoder {
    state: State,
    pending: Vec<u8>,
    hasher: Xxh3,
    header: Option<Header>,
    data_bytes: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("data_bytes", &self.data_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            state: State::Preamble,
            pending: Vec::new(),
            hasher: Xxh3::new(),
            header: None,
            data_bytes: 0,
        }
    }

    /// The header, once it was read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Data bytes seen so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Takes `n` bytes of a fixed field into `pending`; true once whole.
    fn gather(&mut self, input: &mut &[u8], n: usize) -> bool {
        let take = (n - self.pending.len()).min(input.len());
        self.pending.extend_from_slice(&input[..take]);
        *input = &input[take..];
        self.pending.len() == n
    }

    /// Feeds the next bytes; `sink` gets every piece of data, in order.
    /// Data handed on is not yet known to be intact: that is known only
    /// once [`Decoder::finish`] succeeds.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        while !input.is_empty() {
            match self.state {
                State::Preamble => {
                    if !self.gather(&mut input, 16) {
                        continue;
                    }
                    if &self.pending[..8] != MAGIC {
                        return Err(BackupError::NotABackup.into());
                    }
                    let version = u32_at(&self.pending, 8);
                    if version != FORMAT_VERSION {
                        return Err(BackupError::UnknownVersion(version).into());
                    }
                    let len = u32_at(&self.pending, 12);
                    if len > MAX_HEADER {
                        return Err(BackupError::Corrupt("implausible header length".into()).into());
                    }
                    self.hasher.update(&self.pending);
                    self.pending.clear();
                    self.state = State::Header(len as usize);
                }
                State::Header(len) => {
                    if !self.gather(&mut input, len) {
                        continue;
                    }
                    self.hasher.update(&self.pending);
                    let header: Header = serde_json::from_slice(&self.pending).map_err(|e| {
                        BackupError::Corrupt(format!("the header does not decode: {e}"))
                    })?;
                    if header.format_version != FORMAT_VERSION {
                        return Err(BackupError::UnknownVersion(header.format_version).into());
                    }
                    self.header = Some(header);
                    self.pending.clear();
                    self.state = State::FrameLen;
                }
                State::FrameLen => {
                    if !self.gather(&mut input, 4) {
                        continue;
                    }
                    self.hasher.update(&self.pending);
                    let len = u32_at(&self.pending, 0);
                    self.pending.clear();
                    if len > MAX_FRAME {
                        return Err(BackupError::Corrupt("implausible frame length".into()).into());
                    }
                    self.state = if len == 0 {
                        State::Checksum
                    } else {
                        State::Frame(u64::from(len))
                    };
                }
                State::Frame(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let (piece, rest) = input.split_at(take);
                    self.hasher.update(piece);
                    self.data_bytes += take as u64;
                    sink(piece).map_err(FeedError::Sink)?;
                    input = rest;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::FrameLen
                    } else {
                        State::Frame(left)
                    };
                }
                State::Checksum => {
                    if !self.gather(&mut input, 8) {
                        continue;
                    }
                    let mut sum = [0; 8];
                    sum.copy_from_slice(&self.pending);
                    if u64::from_le_bytes(sum) != self.hasher.digest() {
                        return Err(BackupError::Corrupt("checksum mismatch".into()).into());
                    }
                    self.pending.clear();
                    self.state = State::Done;
                }
                State::Done => {
                    return Err(BackupError::Corrupt("bytes after the checksum".into()).into());
                }
            }
        }
        Ok(())
    }

    /// Says whether everything fed was one whole, intact backup.
    pub fn finish(&self) -> Result<&Header, BackupError> {
        match (&self.state, &self.header) {
            (State::Done, Some(h)) => Ok(h),
            (State::Preamble, _) if self.pending.len() < MAGIC.len() => {
                if MAGIC.starts_with(&self.pending) && !self.pending.is_empty() {
                    Err(BackupError::Truncated)
                } else {
                    Err(BackupError::NotABackup)
                }
            }
            _ => Err(BackupError::Truncated),
        }
    }
}

/// A failure while feeding a [`Decoder`]: the bytes, or the sink.
#[derive(Debug)]
pub enum FeedError<E> {
    Backup(BackupError),
    Sink(E),
}

impl<E> From<BackupError> for FeedError<E> {
    fn from(e: BackupError) -> Self {
        FeedError::Backup(e)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format_version: FORMAT_VERSION,
            cluster_id: "c1".into(),
            revision: 7,
            index: 9,
            created_at: 1,
        }
    }

    fn sample(data: &[u8]) -> Vec<u8> {
        let (mut enc, mut out) = Encoder::start(&header()).expect("header");
        for piece in data.chunks(5) {
            out.extend(enc.data(piece));
        }
        out.extend(enc.finish());
        out
    }

    fn decode(bytes: &[u8], step: usize) -> Result<Vec<u8>, BackupError> {
        let mut d = Decoder::new();
        let mut data = Vec::new();
        for piece in bytes.chunks(step) {
            d.feed(piece, &mut |p: &[u8]| {
                data.extend_from_slice(p);
                Ok::<(), ()>(())
            })
            .map_err(|e| match e {
                FeedError::Backup(e) => e,
                FeedError::Sink(()) => BackupError::Truncated,
            })?;
        }
        d.finish()?;
        Ok(data)
    }

    #[test]
    fn a_backup_decodes_to_its_data_fed_in_any_pieces() {
        let data: Vec<u8> = (0..200u8).collect();
        let file = sample(&data);
        for step in [1, 3, 16, 1000] {
            assert_eq!(decode(&file, step), Ok(data.clone()));
        }
    }

    #[test]
    fn every_cut_is_truncated_and_every_flipped_byte_is_refused() {
        let file = sample(b"some store image bytes");
        for cut in 1..file.len() {
            assert!(decode(&file[..cut], 7).is_err(), "cut at {cut}");
        }
        for at in 0..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad, 7).is_err(), "flip at {at}");
        }
        assert_eq!(
            decode(&file[..file.len() - 3], 7),
            Err(BackupError::Truncated)
        );
    }

    #[test]
    fn another_format_version_is_refused_by_number() {
        let mut file = sample(b"x");
        file[8] = 9;
        assert_eq!(decode(&file, 64), Err(BackupError::UnknownVersion(9)));
    }
}
