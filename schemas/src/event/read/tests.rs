//! The hand-written reader against apache-avro's generic path ([`decode_reference`]): equal
//! events on valid datums, both rejecting malformed ones, and the decode speed of both
//! (`bench_decode_paths`, ignored by default).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use super::super::tests::sample;
use super::super::{decode, decode_reference, encode, HEADER_LEN};
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One element of `from` (never empty).
fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> T {
    from[rng.gen_range(0..from.len())]
}

const STRINGS: &[&str] = &[
    "",
    "a",
    "gpt-4o-mini",
    "模型-ü",
    "🚀 emoji and ẞ",
    "nul\0byte",
    "\u{10FFFF}\u{7f}\u{80}",
];

const LONGS: &[i64] = &[
    0,
    1,
    -1,
    63,
    64,
    -64,
    -65,
    8191,
    8192,
    i32::MAX as i64,
    i32::MIN as i64,
    i32::MAX as i64 + 1,
    i64::MAX,
    i64::MIN,
    i64::MAX - 1,
    i64::MIN + 1,
    1_763_700_000_000,
];

const INTS: &[i32] = &[0, 1, -1, 63, 64, -65, 200, 599, i32::MAX, i32::MIN];

fn text(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => "x".repeat(rng.gen_range(0..400)),
        1 => "ü".repeat(rng.gen_range(0..9000)),
        _ => pick(rng, STRINGS).to_string(),
    }
}

fn random_event(rng: &mut StdRng) -> UsageEvent {
    let id =
        uuid::Uuid::from_u128(u128::from(rng.gen::<u64>()) << 64 | u128::from(rng.gen::<u64>()));
    let entries = match rng.gen_range(0..4) {
        0 => 0,
        1 => 1,
        2 => 2 + rng.gen_range(0..5),
        _ => rng.gen_range(0..40),
    };
    let metadata = (0..entries)
        .map(|i| (format!("{i}-{}", text(rng)), text(rng)))
        .collect();
    UsageEvent {
        event_id: id.to_string(),
        request_id: text(rng),
        ts_ms: pick(rng, LONGS),
        proxy_id: text(rng),
        proxy_seq: pick(rng, LONGS),
        api_key_id: text(rng),
        account_id: text(rng),
        team_id: text(rng),
        model: text(rng),
        provider: text(rng),
        upstream_model: text(rng),
        endpoint: text(rng),
        stream: rng.gen_range(0..2) == 1,
        status_code: pick(rng, INTS),
        error_type: (rng.gen_range(0..2) == 1).then(|| text(rng)),
        latency_us: pick(rng, LONGS),
        upstream_latency_us: pick(rng, LONGS),
        ttft_us: (rng.gen_range(0..2) == 1).then(|| pick(rng, LONGS)),
        prompt_tokens: pick(rng, LONGS),
        completion_tokens: pick(rng, LONGS),
        cached_tokens: pick(rng, LONGS),
        usage_estimated: rng.gen_range(0..2) == 1,
        cost_nanos: pick(rng, LONGS),
        attempts: pick(rng, INTS),
        metadata,
    }
}

fn assert_same_ok(bytes: &[u8]) -> UsageEvent {
    let ours = decode(bytes).unwrap_or_else(|e| panic!("hand reader rejects: {e}"));
    let theirs = decode_reference(bytes).unwrap_or_else(|e| panic!("apache-avro rejects: {e}"));
    assert_eq!(ours, theirs);
    ours
}

/// Both reject; returns the hand reader's message.
fn assert_both_reject(bytes: &[u8], what: &str) -> String {
    let ours = decode(bytes);
    let theirs = decode_reference(bytes);
    assert!(theirs.is_err(), "{what}: apache-avro accepts: {theirs:?}");
    match ours {
        Err(e) => e.to_string(),
        Ok(e) => panic!("{what}: hand reader accepts: {e:?}"),
    }
}

/// An Avro long, hand-encoded (independently of `binary.rs`).
fn zz(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let low = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

/// A length-prefixed string of arbitrary bytes.
fn raw_str(b: &[u8]) -> Vec<u8> {
    let mut out = zz(b.len() as i64);
    out.extend_from_slice(b);
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Uuid,
    Str,
    Long,
    Int,
    Bool,
    OptStr,
    OptLong,
    Map,
}

/// The current schema's fields in order, as `write_datum` writes them.
const LAYOUT: [(&str, Kind); 25] = [
    ("event_id", Kind::Uuid),
    ("request_id", Kind::Str),
    ("ts_ms", Kind::Long),
    ("proxy_id", Kind::Str),
    ("proxy_seq", Kind::Long),
    ("api_key_id", Kind::Str),
    ("account_id", Kind::Str),
    ("team_id", Kind::Str),
    ("model", Kind::Str),
    ("provider", Kind::Str),
    ("upstream_model", Kind::Str),
    ("endpoint", Kind::Str),
    ("stream", Kind::Bool),
    ("status_code", Kind::Int),
    ("error_type", Kind::OptStr),
    ("latency_us", Kind::Long),
    ("upstream_latency_us", Kind::Long),
    ("ttft_us", Kind::OptLong),
    ("prompt_tokens", Kind::Long),
    ("completion_tokens", Kind::Long),
    ("cached_tokens", Kind::Long),
    ("usage_estimated", Kind::Bool),
    ("cost_nanos", Kind::Long),
    ("attempts", Kind::Int),
    ("metadata", Kind::Map),
];

fn skip(kind: Kind, input: &mut &[u8]) -> Result<(), Malformed> {
    match kind {
        Kind::Uuid => uuid(input).map(drop),
        Kind::Str => string(input).map(drop),
        Kind::Long => long(input).map(drop),
        Kind::Int => int(input).map(drop),
        Kind::Bool => boolean(input).map(drop),
        Kind::OptStr => optional(input, string).map(drop),
        Kind::OptLong => optional(input, long).map(drop),
        Kind::Map => map(input).map(drop),
    }
}

/// The single-object message of `sample()` with the bytes of field `name` replaced by `raw`.
fn with_field(name: &str, raw: &[u8]) -> Vec<u8> {
    let bytes = encode(&sample()).unwrap();
    let mut out = bytes[..HEADER_LEN].to_vec();
    let mut rest = &bytes[HEADER_LEN..];
    for (field, kind) in LAYOUT {
        let before = rest;
        skip(kind, &mut rest).unwrap();
        if field == name {
            out.extend_from_slice(raw);
        } else {
            out.extend_from_slice(&before[..before.len() - rest.len()]);
        }
    }
    assert!(rest.is_empty());
    assert!(LAYOUT.iter().any(|(f, _)| *f == name), "no field {name}");
    out
}

#[test]
fn differential_on_generated_events() {
    let mut rng = StdRng::seed_from_u64(0x2545_F491_4F6C_DD1D);
    let mut cases = vec![sample(), UsageEvent::default()];
    cases[1].event_id = "00000000-0000-0000-0000-000000000000".into();
    let mut e = sample();
    (e.ts_ms, e.proxy_seq, e.latency_us, e.upstream_latency_us) = (i64::MIN, i64::MAX, -1, 0);
    (e.prompt_tokens, e.completion_tokens) = (i64::MAX, i64::MIN);
    (e.cached_tokens, e.cost_nanos) = (i64::MIN, i64::MAX);
    (e.status_code, e.attempts, e.ttft_us) = (i32::MIN, i32::MAX, Some(i64::MIN));
    (e.stream, e.usage_estimated, e.error_type) = (false, true, Some(String::new()));
    cases.push(e);
    cases.extend((0..3000).map(|_| random_event(&mut rng)));
    for event in &cases {
        let bytes = encode(event).unwrap();
        assert_eq!(&assert_same_ok(&bytes), event);
        let mut body = &bytes[HEADER_LEN..];
        assert_eq!(&read_datum(&mut body).unwrap(), event);
        assert!(body.is_empty());
    }
}

/// Every spelling of a UUID that apache-avro accepts decodes to the same canonical id, and
/// both reject the same non-UUIDs.
#[test]
fn event_id_spellings_match_apache_avro() {
    let id = "0192f0c4-7a3b-7cde-8f00-00000000abcd";
    let uuid = uuid::Uuid::parse_str(id).unwrap();
    for spelling in [
        id.to_string(),
        id.to_uppercase(),
        uuid.simple().to_string(),
        uuid.braced().to_string(),
        uuid.urn().to_string(),
    ] {
        let event = assert_same_ok(&with_field("event_id", &raw_str(spelling.as_bytes())));
        assert_eq!(event.event_id, id, "{spelling}");
    }
    // apache-avro takes exactly 16 bytes as the raw UUID, even in a string: so do we.
    let event = assert_same_ok(&with_field("event_id", &raw_str(uuid.as_bytes())));
    assert_eq!(event.event_id, id);
    let event = assert_same_ok(&with_field("event_id", &raw_str(&[0xff; 16])));
    assert_eq!(event.event_id, "ffffffff-ffff-ffff-ffff-ffffffffffff");
    for bad in [
        &b""[..],
        b"not-a-uuid",
        b"0192f0c4-7a3b-7cde-8f00-00000000abcg",
        b"0192f0c4-7a3b-7cde-8f00-00000000abc",
        b"0123456789abcde",
        b"0123456789abcdef0",
        b"\xff\xfe0192f0c4-7a3b-7cde-8f00-000000000",
    ] {
        let msg = assert_both_reject(&with_field("event_id", &raw_str(bad)), "bad uuid");
        assert!(msg.contains("event_id"), "{msg}");
    }
}

/// Maps in several blocks, negative counts with a byte size (whatever its value: both
/// readers skip it), a repeated key (the last one wins in both).
#[test]
fn map_blocks_and_negative_counts() {
    let entry = |k: &str, v: &str| [raw_str(k.as_bytes()), raw_str(v.as_bytes())].concat();
    let mut raw = Vec::new();
    raw.extend(zz(2));
    raw.extend(entry("k1", "v1"));
    raw.extend(entry("k2", "v2"));
    let block = entry("k3", "ü3");
    raw.extend(zz(-1));
    raw.extend(zz(block.len() as i64));
    raw.extend(block);
    raw.extend(zz(1));
    raw.extend(entry("", ""));
    raw.extend(zz(-2));
    raw.extend(zz(-7));
    raw.extend(entry("k4", "v4"));
    raw.extend(entry("k1", "again"));
    raw.extend(zz(0));
    let event = assert_same_ok(&with_field("metadata", &raw));
    let expected: HashMap<String, String> = [("k1", "again"), ("k2", "v2"), ("k3", "ü3")]
        .into_iter()
        .chain([("", ""), ("k4", "v4")])
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(event.metadata, expected);

    // Empty map: a lone end marker, or empty-looking blocks that are not the end.
    assert!(assert_same_ok(&with_field("metadata", &[0]))
        .metadata
        .is_empty());
    // A block with a negative count alone, its byte size given as 0.
    let mut raw = zz(-1);
    raw.extend(zz(0));
    raw.extend(entry("only", "one"));
    raw.extend(zz(0));
    let event = assert_same_ok(&with_field("metadata", &raw));
    assert_eq!(event.metadata.len(), 1);
}

#[test]
fn truncated_at_every_offset_is_rejected_by_both() {
    let mut full = sample();
    full.error_type = Some("upstream_timeout".into());
    full.metadata = (0..5).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    for event in [sample(), full] {
        let bytes = encode(&event).unwrap();
        for cut in 0..bytes.len() {
            assert_both_reject(&bytes[..cut], &format!("cut at {cut}"));
        }
    }
}

#[test]
fn malformed_fields_are_rejected_by_both() {
    let max = MAX_AVRO_ITEMS as i64;
    let (int_max, int_min) = (i64::from(i32::MAX), i64::from(i32::MIN));
    let eleven_bytes = [vec![0xff; 10], vec![0x01]].concat();
    let (too_many, most_negative) = ([zz(-max - 1), zz(10)].concat(), [zz(i64::MIN), zz(10)]);
    // A map block claiming `count` entries, holding one, unterminated.
    let block = |count: i64, k: &[u8], v: &[u8]| [zz(count), raw_str(k), raw_str(v)].concat();
    let negative_value = [zz(1), raw_str(b"k"), zz(-3)].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("error_type", zz(2), "union branch 2"),
        ("error_type", zz(-1), "union branch -1"),
        ("error_type", zz(1 << 40), "union branch"),
        ("ttft_us", zz(2), "union branch 2"),
        ("ttft_us", zz(-1), "union branch -1"),
        ("stream", vec![2], "boolean byte 2"),
        ("usage_estimated", vec![0xff], "boolean byte 255"),
        ("ts_ms", eleven_bytes, "longer than 10"),
        ("ts_ms", vec![0x80; 11], "longer than 10"),
        ("request_id", zz(-1), "negative length -1"),
        ("request_id", zz(i64::MIN), "negative length"),
        ("request_id", zz(1 << 40), "exceeds the limit"),
        ("request_id", zz(max + 1), "exceeds the limit"),
        ("request_id", zz(max), "ends inside"),
        ("request_id", raw_str(b"\xff\xfe"), "UTF-8"),
        ("request_id", raw_str(b"\xed\xa0\x80"), "UTF-8"),
        ("status_code", zz(int_max + 1), "outside the 32-bit"),
        ("attempts", zz(int_min - 1), "outside the 32-bit"),
        ("attempts", zz(i64::MAX), "outside the 32-bit"),
        ("metadata", zz(max + 1), "exceeds the limit"),
        ("metadata", too_many, "exceeds the limit"),
        ("metadata", most_negative.concat(), "exceeds the limit"),
        ("metadata", zz(-1), "ends inside"),
        ("metadata", zz(max), "ends inside"),
        ("metadata", negative_value, "negative length -3"),
        ("metadata", block(1, b"k", b"\xc3"), "UTF-8"),
        ("metadata", block(1, b"\x80", b"v"), "UTF-8"),
        ("metadata", block(2, b"k", b"v"), "ends inside"),
    ];
    for (name, raw, expected) in cases {
        let what = format!("{name} = {raw:02x?}");
        let msg = assert_both_reject(&with_field(name, &raw), &what);
        assert!(msg.contains(name), "{what}: {msg}");
        assert!(msg.contains(expected), "{what}: {msg}");
    }
}

/// A huge length right after the header: rejected before anything is allocated for it.
#[test]
fn huge_lengths_in_tiny_messages() {
    let header = &encode(&sample()).unwrap()[..HEADER_LEN];
    for n in [
        i64::from(u32::MAX),
        MAX_AVRO_ITEMS as i64,
        1 << 62,
        i64::MAX,
    ] {
        assert_both_reject(&[header, &zz(n)].concat(), &format!("length {n}"));
    }
    // The map reader never reserves more entries than the input could hold.
    let mut input = &[zz(MAX_AVRO_ITEMS as i64), vec![0; 8]].concat()[..];
    assert_eq!(map(&mut input), Err(Malformed::Truncated));
}

#[test]
fn trailing_bytes_are_rejected_by_both() {
    let mut bytes = encode(&sample()).unwrap();
    bytes.push(0);
    let msg = assert_both_reject(&bytes, "trailing byte");
    assert!(msg.contains("1 trailing bytes"), "{msg}");
}

/// Varints: non-canonical padding is accepted by both; a 10th byte with bits beyond the 64th
/// is the one known difference (apache-avro drops those bits, we reject).
#[test]
fn varint_edge_cases() {
    let event = assert_same_ok(&with_field("ts_ms", &[0x80, 0x80, 0x00]));
    assert_eq!(event.ts_ms, 0);
    let event = assert_same_ok(&with_field("status_code", &[0x90, 0x83, 0x80, 0x00]));
    assert_eq!(event.status_code, 200);
    let min = [vec![0xff; 9], vec![0x01]].concat();
    assert_eq!(assert_same_ok(&with_field("ts_ms", &min)).ts_ms, i64::MIN);

    let overflow = with_field("ts_ms", &[vec![0xff; 9], vec![0x03]].concat());
    let theirs = decode_reference(&overflow).unwrap();
    assert_eq!(theirs.ts_ms, i64::MIN, "apache-avro drops the extra bit");
    let ours = decode(&overflow).unwrap_err().to_string();
    assert!(ours.contains("ts_ms: varint overflows 64 bits"), "{ours}");
}

/// Whether `bytes` hold 9 bytes with the continuation bit then one in `2..=0x7f`: a 10-byte
/// varint overflowing 64 bits, which apache-avro accepts (dropping the bits) and we reject.
fn overflowing_varint(bytes: &[u8]) -> bool {
    bytes
        .windows(10)
        .any(|w| w[..9].iter().all(|b| b & 0x80 != 0) && (2..0x80).contains(&w[9]))
}

/// Deterministic mutations of valid messages: both paths agree on accept/reject and on the
/// event (the fuzz target `avro_decode` does the same on arbitrary input).
#[test]
fn mutated_messages_decode_the_same_in_both() {
    let mut rng = StdRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
    let seeds: Vec<Vec<u8>> = (0..50)
        .map(|_| encode(&random_event(&mut rng)).unwrap())
        .chain([encode(&sample()).unwrap()])
        .collect();
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..20_000 {
        let mut bytes = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.gen_range(0..3) {
            let at = HEADER_LEN + rng.gen_range(0..(bytes.len() - HEADER_LEN).max(1));
            match rng.gen_range(0..4) {
                0 => bytes[at] ^= 1 << rng.gen_range(0..8),
                1 => bytes[at] = pick(&mut rng, &[0, 1, 2, 0x7f, 0x80, 0xff]),
                2 => bytes.insert(at, rng.gen::<u64>() as u8),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
            if bytes.len() <= HEADER_LEN {
                break;
            }
        }
        match (decode(&bytes), decode_reference(&bytes)) {
            (Ok(ours), Ok(theirs)) => {
                assert_eq!(ours, theirs, "{bytes:02x?}");
                accepted += 1;
            }
            (Err(_), Err(_)) => rejected += 1,
            (Err(DecodeError::Datum(msg)), Ok(_))
                if msg.contains("varint overflows 64 bits") && overflowing_varint(&bytes) =>
            {
                rejected += 1;
            }
            (ours, theirs) => panic!("{bytes:02x?}: hand {ours:?}, apache-avro {theirs:?}"),
        }
    }
    assert!(
        accepted > 1000 && rejected > 1000,
        "{accepted} / {rejected}"
    );
}

/// `cargo test --release -p tollgate-schemas -- --ignored --nocapture bench_decode_paths`
#[test]
#[ignore = "benchmark: run in release"]
fn bench_decode_paths() {
    const N: usize = 1_000_000;
    let mut rng = StdRng::seed_from_u64(7);
    let messages: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let mut e = sample();
            e.event_id = uuid::Uuid::from_u128(u128::from(rng.gen::<u64>())).to_string();
            e.request_id = format!("req-{i}");
            e.proxy_seq = i;
            e.ttft_us = (i % 3 != 0).then_some(i * 17);
            e.error_type = (i % 10 == 0).then(|| "upstream_timeout".to_string());
            e.metadata = (0..i % 4)
                .map(|j| (format!("key{j}"), format!("value-{i}")))
                .collect();
            encode(&e).unwrap()
        })
        .collect();
    let run = |name: &str, f: fn(&[u8]) -> Result<UsageEvent, DecodeError>| {
        let start = Instant::now();
        for i in 0..N {
            black_box(f(black_box(&messages[i % messages.len()])).unwrap());
        }
        let ns = start.elapsed().as_nanos() as f64 / N as f64;
        println!("{name}: {ns:.0} ns/event over {N} events");
        ns
    };
    let old = run("apache-avro (decode_reference)", decode_reference);
    let new = run("hand-written (decode)", decode);
    println!("speed-up: {:.1}x", old / new);
}
