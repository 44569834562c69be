//! The usage event and its Avro single-object encoding.
//!
//! Wire format (Avro spec, "single object encoding"): the two marker bytes `C3 01`, the
//! 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the writer schema, then the Avro
//! binary datum. Decoders look the fingerprint up among every schema version this crate knows
//! ([`KNOWN_SCHEMAS`]) and resolve the datum to the current schema, so events written by older
//! proxies keep decoding after the schema gains fields (which it may only do with defaults).
//! The current schema's datum is written and read by hand (`event/binary.rs`,
//! `event/read.rs`), older ones are resolved by apache-avro.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::{from_avro_datum, from_value, Schema};
use serde::{Deserialize, Serialize};

/// The current schema text (`schemas/avro/usage_event.avsc`).
pub const USAGE_EVENT_SCHEMA: &str = include_str!("../avro/usage_event.avsc");

/// Every schema version ever published, oldest first; the last one is the current schema.
/// Append (never edit) when the schema changes, and add a golden fixture for the new version.
pub const KNOWN_SCHEMAS: &[&str] = &[USAGE_EVENT_SCHEMA];

mod binary;
mod read;

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// One metered request, as produced by a proxy and stored by the aggregator (design §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UsageEvent {
    /// UUIDv7 of this event.
    pub event_id: String,
    /// The request id returned to the client in `x-request-id`.
    pub request_id: String,
    /// Request start, Unix milliseconds.
    pub ts_ms: i64,
    /// Identity of the producing proxy process.
    pub proxy_id: String,
    /// Per-process sequence number (1, 2, 3, ...) for gap and duplicate accounting.
    pub proxy_seq: i64,
    /// Virtual API key id (never the secret).
    pub api_key_id: String,
    /// Owning account.
    pub account_id: String,
    /// Owning team, empty when none.
    pub team_id: String,
    /// Public model name the client asked for.
    pub model: String,
    /// Provider kind that served the request (e.g. `openai`).
    pub provider: String,
    /// Model name sent upstream.
    pub upstream_model: String,
    /// API endpoint, e.g. `chat.completions`.
    pub endpoint: String,
    /// Whether the response was streamed.
    pub stream: bool,
    /// HTTP status returned to the client.
    pub status_code: i32,
    /// Error class when the request failed.
    pub error_type: Option<String>,
    /// Total time in the proxy, microseconds.
    pub latency_us: i64,
    /// Time spent waiting on the upstream, microseconds.
    pub upstream_latency_us: i64,
    /// Time to first token (streams), microseconds.
    pub ttft_us: Option<i64>,
    /// Input tokens.
    pub prompt_tokens: i64,
    /// Output tokens.
    pub completion_tokens: i64,
    /// Input tokens served from the provider's prompt cache (a subset of `prompt_tokens`).
    pub cached_tokens: i64,
    /// True when token counts were estimated because the provider reported none.
    pub usage_estimated: bool,
    /// Cost in nano-USD (1e-9 USD).
    pub cost_nanos: i64,
    /// Upstream attempts made (1 when the first attempt answered).
    pub attempts: i32,
    /// Client metadata (bounded by the proxy).
    pub metadata: HashMap<String, String>,
}

/// Failure to encode an event.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The event does not fit the schema (a bug: the struct and the schema disagree).
    #[error("usage event does not fit its Avro schema: {0}")]
    Schema(String),
}

/// Failure to decode bytes as a usage event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Too short or missing the `C3 01` marker: not single-object encoded Avro.
    #[error("not an Avro single-object message (missing C3 01 header)")]
    NotSingleObject,
    /// A fingerprint of a schema this build does not know.
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownSchema(u64),
    /// The datum is malformed for its writer schema.
    #[error("malformed Avro datum: {0}")]
    Datum(String),
}

struct Registry {
    current: Schema,
    current_fp: [u8; 8],
    by_fp: Vec<([u8; 8], Schema)>,
}

fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    for (dst, src) in out.iter_mut().zip(fp.bytes.iter()) {
        *dst = *src;
    }
    out
}

/// Largest length prefix (bytes of a string, items of an array or map) the decoder accepts.
const MAX_AVRO_ITEMS: usize = 256 * 1024;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        // apache-avro caps each length prefix at this many *items*, and reserves a map's
        // capacity up front: with the 512 MB default one 200-byte poison message made the
        // decoder allocate ~21 GB (found by `make fuzz`, target avro_decode). Events are a
        // few KB, so 256 Ki items bounds that to a few MB. Set before any decode.
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ITEMS);
        // The schema texts are compiled in and checked by unit tests; a parse failure here
        // cannot happen in a build whose tests pass, so fall back to an empty registry.
        let by_fp: Vec<([u8; 8], Schema)> = KNOWN_SCHEMAS
            .iter()
            .filter_map(|text| Schema::parse_str(text).ok())
            .map(|s| (fingerprint(&s), s))
            .collect();
        let (current_fp, current) = by_fp
            .last()
            .map(|(fp, s)| (*fp, s.clone()))
            .unwrap_or(([0; 8], Schema::Null));
        Registry {
            current,
            current_fp,
            by_fp,
        }
    })
}

/// The parsed current schema.
pub fn current_schema() -> &'static Schema {
    &registry().current
}

/// Fingerprint (CRC-64-AVRO, as a little-endian u64) of the current schema.
pub fn current_fingerprint() -> u64 {
    u64::from_le_bytes(registry().current_fp)
}

/// The event as an apache-avro value of the current schema: the reference that
/// [`binary::write_datum`] is tested against.
#[cfg(test)]
fn to_record(event: &UsageEvent) -> Result<apache_avro::types::Value, EncodeError> {
    use apache_avro::types::Value;
    let uuid = uuid::Uuid::parse_str(&event.event_id)
        .map_err(|e| EncodeError::Schema(format!("event_id is not a UUID: {e}")))?;
    let opt_str = |v: &Option<String>| match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let opt_long = |v: Option<i64>| match v {
        Some(n) => Value::Union(1, Box::new(Value::Long(n))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let s = |v: &str| Value::String(v.to_string());
    let metadata = event
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Ok(Value::Record(vec![
        ("event_id".into(), Value::Uuid(uuid)),
        ("request_id".into(), s(&event.request_id)),
        ("ts_ms".into(), Value::TimestampMillis(event.ts_ms)),
        ("proxy_id".into(), s(&event.proxy_id)),
        ("proxy_seq".into(), Value::Long(event.proxy_seq)),
        ("api_key_id".into(), s(&event.api_key_id)),
        ("account_id".into(), s(&event.account_id)),
        ("team_id".into(), s(&event.team_id)),
        ("model".into(), s(&event.model)),
        ("provider".into(), s(&event.provider)),
        ("upstream_model".into(), s(&event.upstream_model)),
        ("endpoint".into(), s(&event.endpoint)),
        ("stream".into(), Value::Boolean(event.stream)),
        ("status_code".into(), Value::Int(event.status_code)),
        ("error_type".into(), opt_str(&event.error_type)),
        ("latency_us".into(), Value::Long(event.latency_us)),
        (
            "upstream_latency_us".into(),
            Value::Long(event.upstream_latency_us),
        ),
        ("ttft_us".into(), opt_long(event.ttft_us)),
        ("prompt_tokens".into(), Value::Long(event.prompt_tokens)),
        (
            "completion_tokens".into(),
            Value::Long(event.completion_tokens),
        ),
        ("cached_tokens".into(), Value::Long(event.cached_tokens)),
        (
            "usage_estimated".into(),
            Value::Boolean(event.usage_estimated),
        ),
        ("cost_nanos".into(), Value::Long(event.cost_nanos)),
        ("attempts".into(), Value::Int(event.attempts)),
        ("metadata".into(), Value::Map(metadata)),
    ]))
}

/// Encode an event with the current schema as an Avro single-object message.
pub fn encode(event: &UsageEvent) -> Result<Vec<u8>, EncodeError> {
    let reg = registry();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&reg.current_fp);
    binary::write_datum(event, &mut out)?;
    Ok(out)
}

/// Decode an Avro single-object message written with any known schema version.
///
/// The current schema's datum is read by the hand-written reader (`read.rs`); older writer
/// schemas go through apache-avro's schema resolution ([`decode_reference`]).
pub fn decode(bytes: &[u8]) -> Result<UsageEvent, DecodeError> {
    let (fp, writer, mut body) = split_header(bytes)?;
    if fp != registry().current_fp {
        return decode_with_apache_avro(writer, body);
    }
    let event = read::read_datum(&mut body)?;
    no_trailing_bytes(body)?;
    Ok(event)
}

/// Decode as [`decode`] did before the hand-written reader, whatever the schema version:
/// apache-avro's `from_avro_datum` with resolution to the current schema, then serde. The
/// reference that the hand-written reader is tested (and fuzzed) against; not for production.
#[doc(hidden)]
pub fn decode_reference(bytes: &[u8]) -> Result<UsageEvent, DecodeError> {
    let (_, writer, body) = split_header(bytes)?;
    decode_with_apache_avro(writer, body)
}

/// Check the single-object header: the writer schema's fingerprint, the schema, and the
/// datum after the header.
fn split_header(bytes: &[u8]) -> Result<([u8; 8], &'static Schema, &[u8]), DecodeError> {
    let (Some(magic), Some(raw_fp), Some(body)) = (
        bytes.get(..2),
        bytes.get(2..HEADER_LEN),
        bytes.get(HEADER_LEN..),
    ) else {
        return Err(DecodeError::NotSingleObject);
    };
    if magic != MAGIC {
        return Err(DecodeError::NotSingleObject);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(raw_fp);
    let writer = registry()
        .by_fp
        .iter()
        .find(|(known, _)| *known == fp)
        .map(|(_, s)| s)
        .ok_or(DecodeError::UnknownSchema(u64::from_le_bytes(fp)))?;
    Ok((fp, writer, body))
}

/// The datum must be the whole message.
fn no_trailing_bytes(rest: &[u8]) -> Result<(), DecodeError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Datum(format!(
            "{} trailing bytes after the datum",
            rest.len()
        )))
    }
}

/// apache-avro's generic path: decode with the writer schema, resolve to the current one,
/// deserialize with serde.
fn decode_with_apache_avro(writer: &Schema, mut body: &[u8]) -> Result<UsageEvent, DecodeError> {
    let value = from_avro_datum(writer, &mut body, Some(&registry().current))
        .map_err(|e| DecodeError::Datum(e.to_string()))?;
    no_trailing_bytes(body)?;
    from_value::<UsageEvent>(&value).map_err(|e| DecodeError::Datum(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> UsageEvent {
        UsageEvent {
            event_id: "0192f0c4-7a3b-7cde-8f00-000000000001".into(),
            request_id: "req-1".into(),
            ts_ms: 1_763_700_000_000,
            proxy_id: "proxy-a".into(),
            proxy_seq: 42,
            api_key_id: "key_1".into(),
            account_id: "acct_1".into(),
            team_id: "team_1".into(),
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            upstream_model: "gpt-4o-mini-2024-07-18".into(),
            endpoint: "chat.completions".into(),
            stream: true,
            status_code: 200,
            error_type: None,
            latency_us: 12_345,
            upstream_latency_us: 12_000,
            ttft_us: Some(3_000),
            prompt_tokens: 10,
            completion_tokens: 20,
            cached_tokens: 2,
            usage_estimated: false,
            cost_nanos: 13_500,
            attempts: 1,
            metadata: HashMap::from([("run".to_string(), "demo".to_string())]),
        }
    }

    #[test]
    fn round_trip() {
        let event = sample();
        let bytes = encode(&event).unwrap();
        assert_eq!(&bytes[..2], &MAGIC);
        assert_eq!(decode(&bytes).unwrap(), event);
    }

    #[test]
    fn round_trip_with_nulls_and_error() {
        let mut event = sample();
        event.ttft_us = None;
        event.error_type = Some("upstream_timeout".into());
        event.metadata.clear();
        assert_eq!(decode(&encode(&event).unwrap()).unwrap(), event);
    }

    #[test]
    fn every_known_schema_parses_and_is_distinct() {
        let mut fps = Vec::new();
        for text in KNOWN_SCHEMAS {
            let schema = Schema::parse_str(text).unwrap();
            fps.push(fingerprint(&schema));
        }
        fps.sort();
        fps.dedup();
        assert_eq!(fps.len(), KNOWN_SCHEMAS.len());
        assert_eq!(registry().by_fp.len(), KNOWN_SCHEMAS.len());
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            decode(b"hello"),
            Err(DecodeError::NotSingleObject)
        ));
        assert!(matches!(
            decode(b"\xC3\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02"),
            Err(DecodeError::UnknownSchema(0))
        ));
        let mut bytes = encode(&sample()).unwrap();
        bytes.truncate(20);
        assert!(matches!(decode(&bytes), Err(DecodeError::Datum(_))));
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;
    use apache_avro::{to_value, GenericSingleObjectWriter};

    /// Our hand-rolled header must match the reference single-object writer byte for byte.
    #[test]
    fn header_matches_reference_writer() {
        let event = tests::sample();
        let ours = encode(&event).unwrap();
        let value = to_value(&event).unwrap().resolve(current_schema()).unwrap();
        let mut writer =
            GenericSingleObjectWriter::new_with_capacity(current_schema(), 1024).unwrap();
        let mut theirs = Vec::new();
        writer.write_value(value, &mut theirs).unwrap();
        assert_eq!(ours, theirs);
    }
}
