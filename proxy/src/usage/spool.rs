//! Disk spool for usage events the broker cannot take right now.
//!
//! Layout: one directory per proxy process (`kafka.spool.dir`), holding
//! - `LOCK`: held with an exclusive `flock` while a process uses the directory, so two processes
//!   never share it (the OS releases it when the process dies);
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: append-only segment files. Each record is
//!   `[len u32 LE][crc32 u32 LE][payload]` where the CRC-32 covers the payload and the payload is
//!   `[key_len u16 LE][Kafka key][Kafka value (the Avro-encoded event)]`;
//! - `cursor`: `segment offset` of the first record not yet acknowledged by Kafka (a hint written
//!   after every acknowledged replay batch; without it replay restarts at the oldest segment).
//!
//! Writes go to the newest segment, which rolls over at about an eighth of `max_bytes`. Written
//! records are fsynced every `fsync_interval_ms` (0 = after every record) and at shutdown. A
//! record that does not fit under `max_bytes` is refused ([`SpoolError::Full`]); the publisher
//! counts it as dropped.
//!
//! At [`Spool::open`] every segment is scanned: a torn or corrupt tail (a crash mid-write) is
//! detected by its length and CRC and truncated, and records left by a previous process become
//! pending, so they are replayed.
//!
//! Replay reads batches from the cursor ([`Spool::read_batch`]); the cursor moves and fully
//! consumed segments are deleted only when Kafka acknowledged every record of the batch
//! ([`Spool::ack`]). A crash while a batch is in flight therefore re-sends that batch on the next
//! start: those events become new Kafka messages (the aggregator de-duplicates by Kafka offset,
//! not by event, and counts them as `proxy_seq` duplicates). The window is one replay batch,
//! at most [`REPLAY_BATCH_EVENTS`] events, and only on a crash during replay; it is the one
//! accepted duplicate risk.

mod files;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use self::files::{list_segments, read_cursor, read_record, scan_segment, segment_name, sync_dir};

/// `kafka.spool` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool when Kafka is slow or down (disable only if losing events is acceptable).
    pub enabled: bool,
    /// Directory of the spool segments (one directory per proxy process).
    pub dir: PathBuf,
    /// Largest spool size; events beyond it are dropped and counted.
    pub max_bytes: u64,
    /// How often written records are fsynced, ms (0 = after every event).
    pub fsync_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("tollgate-spool"),
            max_bytes: 1024 * 1024 * 1024,
            fsync_interval_ms: 200,
        }
    }
}

/// Most events per replay batch (also the duplicate window of a crash during replay).
pub const REPLAY_BATCH_EVENTS: usize = 500;
/// Most payload bytes per replay batch.
pub const REPLAY_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Largest accepted record payload.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

const HEADER: u64 = 8;
const LOCK_FILE: &str = "LOCK";
const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const SEGMENT_EXT: &str = "seg";

/// Spool failure.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the directory's lock.
    #[error("spool directory {0} is in use by another process (one directory per proxy)")]
    Locked(PathBuf),
    /// A file operation failed.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The record does not fit under `max_bytes`.
    #[error("spool full ({max_bytes} bytes)")]
    Full {
        /// Configured limit.
        max_bytes: u64,
    },
    /// The record is larger than [`MAX_RECORD_BYTES`] or its key longer than 65535 bytes.
    #[error("record too large for the spool ({0} bytes)")]
    TooLarge(usize),
    /// A record read back failed its length or CRC check.
    #[error("corrupt spool record in {path} at offset {offset}")]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Offset of the bad record.
        offset: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Place in the spool: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Segment id.
    pub segment: u64,
    /// Byte offset inside the segment.
    pub offset: u64,
}

/// One spooled Kafka message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledEvent {
    /// Kafka key.
    pub key: Vec<u8>,
    /// Kafka value (the encoded usage event).
    pub value: Vec<u8>,
}

/// Records read for replay, to [`Spool::ack`] once Kafka acknowledged all of them.
#[derive(Debug)]
pub struct Batch {
    /// Events in spool order.
    pub events: Vec<SpooledEvent>,
    /// Position after the last event.
    pub end: Position,
    bytes: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    len: u64,
}

/// The spool of one process. Not thread-safe by itself: the publisher keeps it in a mutex.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    sync_every_record: bool,
    segments: VecDeque<Segment>,
    next_id: u64,
    writer: Option<File>,
    cursor: Position,
    disk_bytes: u64,
    pending_bytes: u64,
    pending_events: u64,
    dirty: bool,
}

impl Spool {
    /// Open (create) the spool directory, lock it, repair torn tails and load what a previous
    /// process left (pending: it will be replayed).
    pub fn open(cfg: &SpoolConfig) -> Result<Self, SpoolError> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir)),
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let mut ids = list_segments(&dir)?;
        ids.sort_unstable();
        let saved = read_cursor(&dir);
        let mut spool = Self {
            segment_bytes: (cfg.max_bytes / 8).clamp(4096, 64 * 1024 * 1024),
            max_bytes: cfg.max_bytes,
            sync_every_record: cfg.fsync_interval_ms == 0,
            segments: VecDeque::new(),
            next_id: 1,
            writer: None,
            cursor: Position {
                segment: 0,
                offset: 0,
            },
            disk_bytes: 0,
            pending_bytes: 0,
            pending_events: 0,
            dirty: false,
            _lock: lock,
            dir,
        };
        let mut cursor = saved.unwrap_or(Position {
            segment: 0,
            offset: 0,
        });
        for id in ids {
            let path = spool.segment_path(id);
            if id < cursor.segment {
                // Fully replayed before a crash, deletion did not happen.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let start = if id == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let mut scan = scan_segment(&path, start)?;
            if id == cursor.segment && !scan.start_is_boundary {
                tracing::warn!(
                    segment = id,
                    offset = start,
                    "spool cursor is not on a record boundary; replaying the whole segment"
                );
                cursor.offset = 0;
                scan = scan_segment(&path, 0)?;
            }
            spool.disk_bytes += scan.valid_len;
            spool.pending_bytes += scan.bytes_after;
            spool.pending_events += scan.events_after;
            spool.segments.push_back(Segment {
                id,
                len: scan.valid_len,
            });
            spool.next_id = id + 1;
        }
        spool.next_id = spool.next_id.max(cursor.segment);
        spool.cursor = match spool.segments.front() {
            Some(first) if first.id == cursor.segment => cursor,
            Some(first) => Position {
                segment: first.id,
                offset: 0,
            },
            None => Position {
                segment: spool.next_id,
                offset: 0,
            },
        };
        if let Some(last) = spool.segments.back() {
            let path = spool.segment_path(last.id);
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            spool.writer = Some(file);
        }
        if spool.pending_events > 0 {
            tracing::info!(
                dir = %spool.dir.display(),
                events = spool.pending_events,
                bytes = spool.pending_bytes,
                "usage spool holds events from a previous run; they will be replayed"
            );
        }
        Ok(spool)
    }

    /// Append one event. Refused with [`SpoolError::Full`] when it would exceed `max_bytes`.
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        let payload_len = 2 + key.len() + value.len();
        let key_len = u16::try_from(key.len()).map_err(|_| SpoolError::TooLarge(payload_len))?;
        if payload_len > MAX_RECORD_BYTES {
            return Err(SpoolError::TooLarge(payload_len));
        }
        let frame = HEADER + payload_len as u64;
        if self.disk_bytes + frame > self.max_bytes {
            return Err(SpoolError::Full {
                max_bytes: self.max_bytes,
            });
        }
        let mut buf = Vec::with_capacity(frame as usize);
        buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&key_len.to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        let crc = crc32fast::hash(&buf[HEADER as usize..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());

        let needs_roll = match self.segments.back() {
            Some(last) => self.writer.is_none() || last.len >= self.segment_bytes,
            None => true,
        };
        if needs_roll {
            self.roll()?;
        }
        let (Some(writer), Some(last)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no writable segment"),
            });
        };
        let path = self.dir.join(segment_name(last.id));
        if let Err(e) = writer.write_all(&buf) {
            // Cut a partial write so the segment stays readable.
            let _ = writer.set_len(last.len);
            return Err(io_err(&path)(e));
        }
        if self.sync_every_record {
            writer.sync_data().map_err(io_err(&path))?;
        } else {
            self.dirty = true;
        }
        last.len += frame;
        self.disk_bytes += frame;
        self.pending_bytes += frame;
        self.pending_events += 1;
        Ok(())
    }

    /// Start a new segment (after syncing the current one).
    fn roll(&mut self) -> Result<(), SpoolError> {
        if let Some(old) = self.writer.take() {
            old.sync_data().map_err(io_err(&self.dir))?;
            self.dirty = false;
        }
        let id = self.next_id;
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.next_id = id + 1;
        if self.segments.is_empty() {
            self.cursor = Position {
                segment: id,
                offset: 0,
            };
        }
        self.segments.push_back(Segment { id, len: 0 });
        self.writer = Some(file);
        Ok(())
    }

    /// Read up to `max_events` pending events from the cursor, in spool order, without
    /// consuming them.
    pub fn read_batch(&self, max_events: usize) -> Result<Batch, SpoolError> {
        let mut events = Vec::new();
        let mut pos = self.cursor;
        let mut bytes = 0;
        for seg in self.segments.iter().filter(|s| s.id >= self.cursor.segment) {
            if events.len() >= max_events || bytes >= REPLAY_BATCH_BYTES {
                break;
            }
            if seg.id != pos.segment {
                pos = Position {
                    segment: seg.id,
                    offset: 0,
                };
            }
            if pos.offset >= seg.len {
                continue;
            }
            let path = self.segment_path(seg.id);
            let mut file = File::open(&path).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(pos.offset))
                .map_err(io_err(&path))?;
            let mut reader = BufReader::with_capacity(64 * 1024, file);
            while pos.offset < seg.len && events.len() < max_events && bytes < REPLAY_BATCH_BYTES {
                let corrupt = || SpoolError::Corrupt {
                    path: path.clone(),
                    offset: pos.offset,
                };
                let (event, frame) = match read_record(&mut reader, seg.len - pos.offset) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(corrupt()),
                    Err(e) => return Err(io_err(&path)(e)),
                };
                events.push(event);
                pos.offset += frame;
                bytes += frame;
            }
        }
        Ok(Batch {
            events,
            end: pos,
            bytes,
        })
    }

    /// Consume a batch Kafka acknowledged: move the cursor past it and delete fully consumed
    /// segments.
    pub fn ack(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        self.pending_events = self
            .pending_events
            .saturating_sub(batch.events.len() as u64);
        self.pending_bytes = self.pending_bytes.saturating_sub(batch.bytes);
        self.advance(batch.end)
    }

    fn advance(&mut self, to: Position) -> Result<(), SpoolError> {
        self.cursor = self.cursor.max(to);
        while let Some(front) = self.segments.front() {
            let consumed = front.id < self.cursor.segment
                || (front.id == self.cursor.segment && self.cursor.offset >= front.len);
            if !consumed {
                break;
            }
            let (id, len) = (front.id, front.len);
            if self.segments.len() == 1 {
                self.writer = None;
                self.dirty = false;
            }
            let path = self.segment_path(id);
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.disk_bytes = self.disk_bytes.saturating_sub(len);
            self.segments.pop_front();
            if id == self.cursor.segment {
                self.cursor = Position {
                    segment: self.segments.front().map_or(self.next_id, |s| s.id),
                    offset: 0,
                };
            }
        }
        if self.segments.is_empty() {
            self.pending_events = 0;
            self.pending_bytes = 0;
        }
        self.write_cursor()
    }

    /// Give up on the rest of the cursor's segment after a corrupt record; returns how many
    /// events were lost with it.
    pub fn skip_corrupt_segment(&mut self) -> Result<u64, SpoolError> {
        let Some(seg) = self.segments.iter().find(|s| s.id == self.cursor.segment) else {
            return Ok(0);
        };
        let end = Position {
            segment: seg.id,
            offset: seg.len,
        };
        let before = self.pending_events;
        self.advance(end)?;
        let (mut events, mut bytes) = (0, 0);
        for seg in &self.segments {
            let scan = scan_segment(&self.segment_path(seg.id), 0)?;
            events += scan.events_after;
            bytes += scan.bytes_after;
        }
        self.pending_events = events;
        self.pending_bytes = bytes;
        Ok(before.saturating_sub(events))
    }

    fn write_cursor(&self) -> Result<(), SpoolError> {
        let tmp = self.dir.join(CURSOR_TMP);
        let text = format!("{} {}\n", self.cursor.segment, self.cursor.offset);
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        let path = self.dir.join(CURSOR_FILE);
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// A handle to fsync outside the lock if records were written since the last sync.
    pub fn take_unsynced(&mut self) -> Option<File> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.writer.as_ref().and_then(|w| w.try_clone().ok())
    }

    /// Fsync written records now.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(file) = self.take_unsynced() {
            file.sync_data().map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    /// Events not yet acknowledged by Kafka.
    pub fn pending_events(&self) -> u64 {
        self.pending_events
    }

    /// Bytes of events not yet acknowledged by Kafka.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Bytes the segments take on disk (what `max_bytes` bounds).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "usage spool not synced at close");
        }
    }
}
