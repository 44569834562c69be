//! Fuzz harness bodies shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and the
//! corpus-replay test of the main workspace (`proxy/tests/fuzz_corpus.rs`, which includes
//! this file by path). Each function must never panic, whatever the input; the checks inside
//! are invariants that hold for every input.

use serde_json::Value;
use tollgate_proxy::http::client_body::ClientBody;
use tollgate_proxy::http::pipeline::check_fields;
use tollgate_proxy::http::sse::{self, EventSplitter};
use tollgate_proxy::http::{chunk, json_scan};
use tollgate_proxy::providers::anthropic::{
    self, AnthropicToOpenAiStream, OpenAiToAnthropicStream,
};
use tollgate_proxy::providers::{tokens, Endpoint};

/// The fuzz targets, by name (also the corpus directory names).
pub const TARGETS: &[&str] = &[
    "openai_request",
    "sse_stream",
    "anthropic_translate",
    "avro_decode",
];

/// Run the target called `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "openai_request" => openai_request(data),
        "sse_stream" => sse_stream(data),
        "anthropic_translate" => anthropic_translate(data),
        "avro_decode" => avro_decode(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// The response envelope reader finds the `model` and `usage` serde finds in a well-formed
/// object (`null` reads as absent).
fn envelope_agrees(data: &[u8]) {
    let (Some(env), Ok(Value::Object(map))) = (
        json_scan::envelope(data),
        serde_json::from_slice::<Value>(data),
    ) else {
        return;
    };
    for (key, span) in [("model", env.model), ("usage", env.usage)] {
        let fast = span.map(|r| serde_json::from_slice::<Value>(&data[r]).ok());
        let slow = map.get(key).filter(|v| !v.is_null()).cloned().map(Some);
        assert_eq!(fast, slow, "envelope readers differ on {key}");
    }
}

/// Request bodies: the raw read of a body (`ClientBody`), the field checks on every endpoint,
/// the prompt estimate and the upstream body of a passthrough route, checked against a parsed
/// tree of the same body where one can be made.
pub fn openai_request(data: &[u8]) {
    let Ok(body) = ClientBody::parse(data.to_vec()) else {
        return;
    };
    // No tree for numbers beyond f64, which the raw read passes on.
    let tree = body.tree().ok();
    let estimate = body.prompt_estimate();
    if let Some(tree) = tree {
        assert_eq!(estimate, tokens::estimate_prompt(tree), "estimates differ");
    }
    for endpoint in [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Messages,
    ] {
        if let Ok((model, stream)) = check_fields(&body, endpoint) {
            assert!(!model.is_empty() && model.len() <= 256);
            assert!(!stream || endpoint.can_stream());
            if let Some(tree) = tree {
                assert_eq!(tree["model"].as_str(), Some(model.as_str()));
                assert_eq!(tree["stream"].as_bool().unwrap_or(false), stream);
            }
        }
    }
    let _ = body.metadata(16, 64, 512);
    for ask_usage in [false, true] {
        let Ok(up) = body.passthrough("mock-upstream", ask_usage) else {
            continue;
        };
        if tree.is_some() {
            let v: Value = serde_json::from_slice(&up).expect("upstream body is JSON");
            assert_eq!(v["model"], "mock-upstream");
            if ask_usage && v["stream_options"].is_object() {
                assert_eq!(v["stream_options"]["include_usage"], true);
            }
        }
    }
}

/// Cut `data` into chunks whose sizes come from the data itself (first byte = seed).
fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let Some((&seed, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut size = usize::from(seed % 17) + 1;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        size = (size * 7 + 3) % 23 + 1;
    }
    out
}

/// SSE streams: event splitting (no byte lost or invented), `data:` extraction, OpenAI and
/// Anthropic metering inspectors, model rewriting.
pub fn sse_stream(data: &[u8]) {
    let mut splitter = EventSplitter::default();
    let mut seen = Vec::with_capacity(data.len());
    for chunk in chunks(data) {
        for event in splitter.push(chunk) {
            seen.extend_from_slice(&event);
            if let Some(data) = sse::data_of(&event) {
                // The fast chunk reader agrees with serde on well-formed chunks it reads.
                let data = data.trim_ascii();
                if let Some(fast) = chunk::read(data) {
                    if serde_json::from_slice::<Value>(data).is_ok() {
                        assert_eq!(Some(fast), sse::probe_openai(data), "chunk readers differ");
                    }
                }
                envelope_agrees(data);
            }
            let _ = sse::inspect_openai(&event);
            let (_, usage) = sse::inspect_anthropic(&event);
            if let Some(u) = usage {
                let _ = u.tokens();
            }
            if let Some(rewritten) = sse::rewrite_model(&event, "gpt-mock", "mock-upstream") {
                let _ = sse::inspect_openai(&rewritten);
            }
        }
    }
    seen.extend_from_slice(&splitter.rest());
    assert_eq!(
        seen,
        data.get(1..).unwrap_or_default(),
        "the splitter lost or invented bytes"
    );
}

/// Anthropic translation: the first byte picks the direction, the rest is the body or stream.
pub fn anthropic_translate(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => {
            if let Ok(v) = serde_json::from_slice::<Value>(rest) {
                let _ = anthropic::include_usage(&v);
                let _ = anthropic::openai_to_anthropic_request(&v);
            }
        }
        1 => {
            if let Ok(v) = serde_json::from_slice::<Value>(rest) {
                let _ = anthropic::anthropic_to_openai_request(&v);
            }
        }
        2 => {
            let _ = anthropic::anthropic_error_to_openai(400 + u16::from(mode % 200), rest);
            if let Ok(v) = serde_json::from_slice::<Value>(rest) {
                let _ = anthropic::anthropic_to_openai_response(&v, "claude-mock", 1);
            }
        }
        3 => {
            let _ = anthropic::openai_error_to_anthropic(400 + u16::from(mode % 200), rest);
            if let Ok(v) = serde_json::from_slice::<Value>(rest) {
                let _ = anthropic::openai_to_anthropic_response(&v, "claude-mock");
            }
        }
        4 => {
            let mut t = AnthropicToOpenAiStream::new("claude-mock", 1, mode & 8 != 0);
            for chunk in chunks(rest) {
                if t.feed(chunk).is_err() {
                    return;
                }
            }
            let _ = t.finish();
            let _ = (t.usage(), t.emitted_token(), t.is_done(), t.finish_reason());
        }
        _ => {
            let mut t = OpenAiToAnthropicStream::new("gpt-mock");
            for chunk in chunks(rest) {
                if t.feed(chunk).is_err() {
                    return;
                }
            }
            let _ = t.finish();
            let _ = (t.usage(), t.emitted_token(), t.is_done());
        }
    }
}

/// Avro single-object messages: decoding never panics; the hand-written reader (`decode`) and
/// apache-avro's generic path (`decode_reference`) agree on every input: both accept with the
/// same event, or both reject with the same kind of error. One known exception: a 10-byte
/// varint overflowing 64 bits, whose extra bits apache-avro drops and the hand reader
/// rejects. What decodes re-encodes and decodes to the same event.
pub fn avro_decode(data: &[u8]) {
    use tollgate_schemas::DecodeError;
    let ours = tollgate_schemas::decode(data);
    let reference = tollgate_schemas::event::decode_reference(data);
    let event = match (ours, reference) {
        (Ok(ours), Ok(reference)) => {
            assert_eq!(ours, reference, "the two decoders disagree on the event");
            ours
        }
        (Err(ours), Err(reference)) => {
            assert_eq!(
                std::mem::discriminant(&ours),
                std::mem::discriminant(&reference),
                "different errors: hand-written {ours}, apache-avro {reference}"
            );
            return;
        }
        (Err(DecodeError::Datum(msg)), Ok(_))
            if msg.contains("varint overflows 64 bits") && overflowing_varint(data) =>
        {
            return;
        }
        (ours, reference) => {
            panic!("the decoders disagree: hand-written {ours:?}, apache-avro {reference:?}")
        }
    };
    if let Ok(bytes) = tollgate_schemas::encode(&event) {
        let again = tollgate_schemas::decode(&bytes);
        assert!(
            again.as_ref().is_ok_and(|again| *again == event),
            "a re-encoded event does not decode to itself: {again:?}"
        );
    }
}

/// Whether `data` holds 9 bytes with the continuation bit then one in `2..=0x7f`: a 10-byte
/// Avro varint that overflows 64 bits.
fn overflowing_varint(data: &[u8]) -> bool {
    data.windows(10)
        .any(|w| w[..9].iter().all(|b| b & 0x80 != 0) && (2..0x80).contains(&w[9]))
}
