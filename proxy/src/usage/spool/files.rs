//! On-disk format of the spool: segment names, record framing, torn-tail repair.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::{
    io_err, Position, SpoolError, SpooledEvent, CURSOR_FILE, HEADER, MAX_RECORD_BYTES, SEGMENT_EXT,
};

/// What a scan of one segment found.
pub(super) struct Scan {
    /// Bytes of whole, valid records (the file is cut there).
    pub(super) valid_len: u64,
    /// Records at or after the start offset.
    pub(super) events_after: u64,
    /// Their bytes.
    pub(super) bytes_after: u64,
    /// Whether the start offset is a record boundary.
    pub(super) start_is_boundary: bool,
}

pub(super) fn segment_name(id: u64) -> String {
    format!("{id:020}.{SEGMENT_EXT}")
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(SEGMENT_EXT)
            .and_then(|s| s.strip_suffix('.'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

pub(super) fn read_cursor(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join(CURSOR_FILE)).ok()?;
    let mut parts = text.split_whitespace();
    let segment = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some(Position { segment, offset })
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Read one record with at most `limit` bytes left in the segment. `Ok(None)`: torn or
/// corrupt (short header, impossible length, CRC mismatch, bad key length).
pub(super) fn read_record(
    reader: &mut impl Read,
    limit: u64,
) -> io::Result<Option<(SpooledEvent, u64)>> {
    if limit < HEADER {
        return Ok(None);
    }
    let mut header = [0u8; HEADER as usize];
    if let Err(e) = reader.read_exact(&mut header) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(2..=MAX_RECORD_BYTES).contains(&len) || HEADER + len as u64 > limit {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if let Err(e) = reader.read_exact(&mut payload) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    let key_len = usize::from(u16::from_le_bytes([payload[0], payload[1]]));
    if 2 + key_len > len {
        return Ok(None);
    }
    let value = payload.split_off(2 + key_len);
    let key = payload.split_off(2);
    Ok(Some((SpooledEvent { key, value }, HEADER + len as u64)))
}

/// Validate a segment, truncating a torn or corrupt tail; count records from `start`.
pub(super) fn scan_segment(path: &Path, start: u64) -> Result<Scan, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, &file);
    let mut offset = 0;
    let mut scan = Scan {
        valid_len: 0,
        events_after: 0,
        bytes_after: 0,
        start_is_boundary: start == 0,
    };
    while offset < file_len {
        match read_record(&mut reader, file_len - offset).map_err(io_err(path))? {
            Some((_, frame)) => {
                if offset >= start {
                    scan.events_after += 1;
                    scan.bytes_after += frame;
                }
                offset += frame;
                if offset == start {
                    scan.start_is_boundary = true;
                }
            }
            None => break,
        }
    }
    scan.valid_len = offset;
    if offset < file_len {
        tracing::warn!(
            segment = %path.display(),
            valid_bytes = offset,
            discarded_bytes = file_len - offset,
            "usage spool segment has a torn or corrupt tail (crash mid-write?); truncating it"
        );
        file.set_len(offset).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok(scan)
}
