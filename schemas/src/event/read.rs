//! The Avro binary datum of a [`UsageEvent`] written with the **current** schema
//! (`schemas/avro/usage_event.avsc`), read field by field straight into the struct: the
//! counterpart of [`super::binary::write_datum`].
//!
//! The aggregator decodes every Kafka usage event. apache-avro's `from_avro_datum` builds a
//! generic `Value` tree (a `String` per field name, a `HashMap` for the record's map, a `Box`
//! per union), resolves it against the reader schema, then serde walks the tree again into
//! the struct. A CPU profile of the aggregator put that path (`decode_internal`,
//! `ResolvedSchema::resolve`, serde `visit_map`, the map inserts, string clones and the
//! allocator behind them) at about 40 % of its CPU. This reader allocates only the struct's own
//! strings and map.
//!
//! It accepts and rejects what the apache-avro path does (the tests compare both on valid,
//! hand-built and malformed datums, and the `avro_decode` fuzz target does so on arbitrary
//! input), with one deliberate exception: a 10-byte varint whose last byte carries bits beyond
//! the 64th is an error here, where apache-avro silently drops those bits.
//!
//! Older writer schemas (none exist yet) still go through apache-avro's schema resolution in
//! [`super::decode`]; only the current fingerprint comes here.

use std::collections::HashMap;
use std::fmt;

use super::{DecodeError, UsageEvent, MAX_AVRO_ITEMS};

/// Read one datum of the current schema from the front of `bytes`, advancing it past the
/// datum (the caller rejects what is left over).
pub(super) fn read_datum(bytes: &mut &[u8]) -> Result<UsageEvent, DecodeError> {
    let input = bytes;
    Ok(UsageEvent {
        event_id: field("event_id", uuid(input))?,
        request_id: field("request_id", string(input))?,
        ts_ms: field("ts_ms", long(input))?,
        proxy_id: field("proxy_id", string(input))?,
        proxy_seq: field("proxy_seq", long(input))?,
        api_key_id: field("api_key_id", string(input))?,
        account_id: field("account_id", string(input))?,
        team_id: field("team_id", string(input))?,
        model: field("model", string(input))?,
        provider: field("provider", string(input))?,
        upstream_model: field("upstream_model", string(input))?,
        endpoint: field("endpoint", string(input))?,
        stream: field("stream", boolean(input))?,
        status_code: field("status_code", int(input))?,
        error_type: field("error_type", optional(input, string))?,
        latency_us: field("latency_us", long(input))?,
        upstream_latency_us: field("upstream_latency_us", long(input))?,
        ttft_us: field("ttft_us", optional(input, long))?,
        prompt_tokens: field("prompt_tokens", long(input))?,
        completion_tokens: field("completion_tokens", long(input))?,
        cached_tokens: field("cached_tokens", long(input))?,
        usage_estimated: field("usage_estimated", boolean(input))?,
        cost_nanos: field("cost_nanos", long(input))?,
        attempts: field("attempts", int(input))?,
        metadata: field("metadata", map(input))?,
    })
}

/// What is wrong with a field's bytes (formatted only when a datum is rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    /// The input ends inside the value.
    Truncated,
    /// A varint with a continuation bit on its 10th byte.
    VarintTooLong,
    /// A 10-byte varint whose last byte holds bits beyond the 64th.
    VarintOverflow,
    /// An Avro `int` outside the `i32` range.
    IntRange(i64),
    /// A boolean byte other than 0 or 1.
    Boolean(u8),
    /// A negative string length.
    NegativeLength(i64),
    /// A string length or map block count above [`MAX_AVRO_ITEMS`].
    TooLong(u64),
    /// String bytes that are not UTF-8.
    Utf8,
    /// A `["null", T]` union branch other than 0 or 1.
    UnionIndex(i64),
    /// An `event_id` that is neither a UUID string nor 16 raw bytes.
    Uuid,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "the datum ends inside the value"),
            Self::VarintTooLong => write!(f, "varint longer than 10 bytes"),
            Self::VarintOverflow => write!(f, "varint overflows 64 bits"),
            Self::IntRange(n) => write!(f, "int {n} is outside the 32-bit range"),
            Self::Boolean(b) => write!(f, "boolean byte {b} is neither 0 nor 1"),
            Self::NegativeLength(n) => write!(f, "negative length {n}"),
            Self::TooLong(n) => write!(f, "length {n} exceeds the limit of {MAX_AVRO_ITEMS}"),
            Self::Utf8 => write!(f, "string is not valid UTF-8"),
            Self::UnionIndex(i) => {
                write!(f, "union branch {i} (a [\"null\", T] union has 0 and 1)")
            }
            Self::Uuid => write!(f, "not a UUID"),
        }
    }
}

/// Name the field in an error.
fn field<T>(name: &'static str, read: Result<T, Malformed>) -> Result<T, DecodeError> {
    read.map_err(|m| DecodeError::Datum(format!("field {name}: {m}")))
}

/// An unsigned varint: 7 bits per byte, least significant first, at most 10 bytes, and the
/// 10th may only hold the 64th bit.
#[inline]
fn varint(input: &mut &[u8]) -> Result<u64, Malformed> {
    // Most values (lengths, small counts, flags) fit in one byte.
    if let Some((&byte, rest)) = input.split_first() {
        if byte < 0x80 {
            *input = rest;
            return Ok(u64::from(byte));
        }
    }
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(10) {
        if i == 9 {
            if byte & 0x80 != 0 {
                return Err(Malformed::VarintTooLong);
            }
            if byte > 1 {
                return Err(Malformed::VarintOverflow);
            }
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(value);
        }
    }
    Err(Malformed::Truncated)
}

/// An Avro `long`: a zigzag varint.
fn long(input: &mut &[u8]) -> Result<i64, Malformed> {
    let z = varint(input)?;
    Ok((z >> 1) as i64 ^ -((z & 1) as i64))
}

/// An Avro `int`: the same encoding as a long, range-checked (as apache-avro does).
fn int(input: &mut &[u8]) -> Result<i32, Malformed> {
    let n = long(input)?;
    i32::try_from(n).map_err(|_| Malformed::IntRange(n))
}

fn boolean(input: &mut &[u8]) -> Result<bool, Malformed> {
    let (&byte, rest) = input.split_first().ok_or(Malformed::Truncated)?;
    *input = rest;
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(Malformed::Boolean(other)),
    }
}

/// Length-prefixed bytes, borrowed from the input. The length is checked against
/// [`MAX_AVRO_ITEMS`] and against what is left before anything is taken.
fn bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], Malformed> {
    let len = long(input)?;
    let len = u64::try_from(len).map_err(|_| Malformed::NegativeLength(len))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_AVRO_ITEMS)
        .ok_or(Malformed::TooLong(len))?;
    if len > input.len() {
        return Err(Malformed::Truncated);
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

/// A length-prefixed UTF-8 string.
fn string(input: &mut &[u8]) -> Result<String, Malformed> {
    let raw = bytes(input)?;
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| Malformed::Utf8)
}

/// The `event_id` field, a string with logical type `uuid`, returned in canonical form (lower
/// case, hyphenated) as the apache-avro path does: it parses the string (hyphenated, simple,
/// braced or URN, any case) into a `Uuid`, and takes exactly 16 bytes as the raw UUID.
fn uuid(input: &mut &[u8]) -> Result<String, Malformed> {
    let raw = bytes(input)?;
    let parsed = if raw.len() == 16 {
        uuid::Uuid::from_slice(raw)
    } else {
        uuid::Uuid::try_parse_ascii(raw)
    };
    let id = parsed.map_err(|_| Malformed::Uuid)?;
    let mut buf = uuid::Uuid::encode_buffer();
    Ok(id.hyphenated().encode_lower(&mut buf).to_owned())
}

/// A `["null", T]` union: branch 0 is none, branch 1 is a `T`.
fn optional<T>(
    input: &mut &[u8],
    read: fn(&mut &[u8]) -> Result<T, Malformed>,
) -> Result<Option<T>, Malformed> {
    match long(input)? {
        0 => Ok(None),
        1 => read(input).map(Some),
        other => Err(Malformed::UnionIndex(other)),
    }
}

/// A map of strings: blocks of (count, entries) ended by a zero count. A negative count means
/// |count| entries preceded by the block's size in bytes (read and ignored, as apache-avro
/// does). Each block's count is capped at [`MAX_AVRO_ITEMS`], and the capacity reserved never
/// exceeds what the remaining input could hold (an entry takes at least 2 bytes).
fn map(input: &mut &[u8]) -> Result<HashMap<String, String>, Malformed> {
    let mut out = HashMap::new();
    loop {
        let count = long(input)?;
        let items = match count {
            0 => return Ok(out),
            n if n < 0 => {
                long(input)?;
                n.unsigned_abs()
            }
            n => n.unsigned_abs(),
        };
        let items = usize::try_from(items)
            .ok()
            .filter(|&n| n <= MAX_AVRO_ITEMS)
            .ok_or(Malformed::TooLong(items))?;
        out.reserve(items.min(input.len() / 2));
        for _ in 0..items {
            let key = string(input)?;
            let value = string(input)?;
            out.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests;
