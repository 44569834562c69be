use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::providers::tokens::estimate_prompt;

fn body(text: &str) -> ClientBody {
    ClientBody::parse(Bytes::from(text.to_owned())).unwrap()
}

fn value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn fields_are_located_without_their_surrounding_whitespace() {
    let b = body(" {\n \"model\" :  \"gpt\" ,\"stream\":true, \"other\": [1, {\"model\": 2}] }\n");
    assert_eq!(b.field("model").unwrap().0, "\"gpt\"");
    assert_eq!(b.field("stream").unwrap().as_bool(), Some(true));
    assert!(
        b.field("other").is_none(),
        "only the fields the proxy reads"
    );
    assert!(b.field("max_tokens").is_none());
    let n = body(r#"{"max_tokens": 12, "m": 1.5, "x": -1, "s": "a\"b", "e": []}"#);
    assert_eq!(n.field("max_tokens").unwrap().as_u64(), Some(12));
    assert_eq!(Json("1.5").as_u64(), None);
    assert_eq!(Json("-1").as_u64(), None);
    assert_eq!(Json(r#""a\"b""#).as_str().unwrap(), "a\"b");
    assert!(!body(r#"{"messages": [ ]}"#).has_messages());
    assert!(!body(r#"{"messages": {"a": 1}}"#).has_messages());
    assert!(body(r#"{"messages": [ 1 ]}"#).has_messages());
    assert_eq!(
        body(r#"{"prompt": ["a"]}"#).kind_of("prompt"),
        Some(Kind::Array)
    );
    assert_eq!(body(r#"{"input": 3}"#).kind_of("input"), Some(Kind::Number));
    assert_eq!(body(r#"{"input": 3}"#).kind_of("prompt"), None);
    assert_eq!(Json("null").kind(), Kind::Null);
}

#[test]
fn bodies_that_are_not_one_object_are_refused_as_before() {
    for (text, msg) in [
        ("[1, 2]", "the body must be a JSON object"),
        ("\"x\"", "the body must be a JSON object"),
        ("{\"model\": ", "EOF while parsing a value"),
        ("{\"a\": 1,}", "trailing comma"),
        ("{\"a\": 1} x", "trailing characters"),
        ("", "EOF while parsing a value"),
    ] {
        let err = ClientBody::parse(Bytes::from(text)).unwrap_err();
        let ApiError::InvalidJson(m) = &err else {
            panic!("{text}: {err:?}");
        };
        assert!(m.contains(msg), "{text}: {m}");
    }
}

#[test]
fn nesting_deeper_than_a_tree_allows_is_refused_as_before() {
    let nested = |n: usize| format!(r#"{{"model":"m","x":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
    // The top-level object is one level: 126 arrays inside it make 127.
    assert!(ClientBody::parse(nested(126)).is_ok());
    let err = ClientBody::parse(nested(127)).unwrap_err();
    assert!(
        matches!(&err, ApiError::InvalidJson(m) if m.contains("recursion limit")),
        "{err:?}"
    );
    assert!(serde_json::from_str::<Value>(&nested(127)).is_err());
    assert!(serde_json::from_str::<Value>(&nested(126)).is_ok());
    // Brackets inside strings do not count.
    let text = format!(r#"{{"model":"{}\"["}}"#, "[".repeat(500));
    assert!(ClientBody::parse(text).is_ok());
}

#[test]
fn passthrough_replaces_the_model_in_place_and_keeps_everything_else() {
    let text = r#"{ "z_first": 1, "model" : "public", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.70 }"#;
    let b = body(text);
    let out = b.passthrough("up\"stream", false).unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        text.replace(r#""public""#, r#""up\"stream""#),
        "key order, spacing and number spelling kept"
    );
    let same = b.passthrough("public", false).unwrap();
    assert_eq!(same.as_ptr(), b.bytes().as_ptr(), "unchanged: no copy");
}

#[test]
fn passthrough_asks_for_usage_by_adding_or_merging_stream_options() {
    let v = value(
        &body(r#"{"model": "p", "stream": true}"#)
            .passthrough("u", true)
            .unwrap(),
    );
    assert_eq!(
        v,
        json!({"model": "u", "stream": true, "stream_options": {"include_usage": true}})
    );
    let v = value(
        &body(r#"{"stream_options": {"other": 2, "include_usage": false}, "model": "p"}"#)
            .passthrough("u", true)
            .unwrap(),
    );
    assert_eq!(
        v["stream_options"],
        json!({"other": 2, "include_usage": true})
    );
    let asked = body(r#"{"model": "u", "stream_options": {"include_usage": true}}"#);
    assert!(asked.wants_usage());
    let out = asked.passthrough("u", true).unwrap();
    assert_eq!(out.as_ptr(), asked.bytes().as_ptr(), "nothing to change");
    // Not an object: left for the upstream to judge, as before.
    let odd = body(r#"{"model": "p", "stream_options": null}"#);
    assert!(!odd.wants_usage());
    assert_eq!(
        value(&odd.passthrough("u", true).unwrap())["stream_options"],
        Value::Null
    );
    // A body without `model` (only other endpoints' validation would let it through).
    let v = value(&body(r#"{"input": "x"}"#).passthrough("m", true).unwrap());
    assert_eq!(
        v,
        json!({"input": "x", "model": "m", "stream_options": {"include_usage": true}})
    );
    let v = value(&body("{ }").passthrough("m", false).unwrap());
    assert_eq!(v, json!({"model": "m"}));
}

#[test]
fn a_repeated_key_is_normalised_so_the_upstream_sees_what_the_proxy_read() {
    let b = body(r#"{"model": "expensive", "messages": [], "model": "cheap", "stream": false}"#);
    assert_eq!(b.field("model").unwrap().as_str().unwrap(), "cheap");
    let up = b.passthrough("cheap-upstream", false).unwrap();
    let text = std::str::from_utf8(&up).unwrap();
    assert_eq!(text.matches("\"model\"").count(), 1, "{text}");
    assert!(!text.contains("expensive"), "{text}");
    assert_eq!(value(&up)["model"], "cheap-upstream");
}

#[test]
fn many_keys_are_checked_for_repeats_through_a_set() {
    // 200,000 distinct keys: a pairwise check would make 2e10 comparisons.
    let keys: String = (0..200_000).map(|i| format!(r#","k{i}":0"#)).collect();
    let text = format!(r#"{{"model":"m"{keys}}}"#);
    let b = body(&text);
    assert_eq!(b.field("model").unwrap().as_str().unwrap(), "m");
    assert_eq!(
        b.bytes().as_ref(),
        text.as_bytes(),
        "no repeat: the body as sent"
    );
    // 40 keys and then `model` again: found beyond the pairwise range too.
    let keys: String = (0..40).map(|i| format!(r#","k{i}":{i}"#)).collect();
    let b = body(&format!(r#"{{"model":"first"{keys},"model":"last"}}"#));
    assert_eq!(b.field("model").unwrap().as_str().unwrap(), "last");
    let text = std::str::from_utf8(b.bytes()).unwrap();
    assert_eq!(text.matches("\"model\"").count(), 1, "normalised");
}

#[test]
fn numbers_beyond_f64_pass_through_but_cannot_be_translated() {
    let b =
        body(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1e400}"#);
    assert!(b.passthrough("u", false).unwrap().ends_with(b"1e400}"));
    assert!(matches!(b.tree(), Err(ApiError::InvalidJson(_))));
    let ok = body(r#"{"model": "m", "n": 2}"#);
    assert_eq!(ok.tree().unwrap()["n"], 2);
}

#[test]
fn metadata_keeps_string_values_in_key_order_within_bounds() {
    let b = body(
        r#"{"metadata": {"b": "2", "a": "1", "n": 3, "b": "later", "long": "xxxxxx", "c\u00e9": "v"}}"#,
    );
    assert_eq!(
        b.metadata(16, 64, 5),
        vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "later".to_string()),
            ("cé".to_string(), "v".to_string()),
        ]
    );
    assert_eq!(b.metadata(1, 64, 5).len(), 1);
    assert!(body(r#"{"metadata": ["a"]}"#)
        .metadata(16, 64, 512)
        .is_empty());
}

#[test]
fn prompt_estimate_matches_the_tree_estimate() {
    for text in [
        r#"{"messages": [{"role": "user", "content": "hello world"}, {"content": [{"type": "text", "text": "hello"}, "plain", 7, {"text": ["nested", {"text": "deeper"}]}]}, 5, {"role": "x"}]}"#,
        r#"{"system": "be brief", "prompt": ["a", "b"], "input": "日本語のテキスト", "messages": "not an array"}"#,
        r#"{"messages": [{"content": "esc\"aped \u00e9\n", "content": "last wins"}]}"#,
        r#"{"model": "m"}"#,
    ] {
        let b = body(text);
        assert_eq!(
            b.prompt_estimate(),
            estimate_prompt(&value(text.as_bytes())),
            "{text}"
        );
    }
}

/// Random JSON of the shape of chat requests (and odd variants of it).
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    let pick = rng.gen_range(0..if depth > 2 { 5 } else { 8 });
    match pick {
        0 => Value::Null,
        1 => json!(rng.gen_bool(0.5)),
        2 => json!(rng.gen_range(-3i64..70_000)),
        3 => json!(rng.gen_range(-1.0..2.0)),
        4 => json!(random_text(rng)),
        5 | 6 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..4) {
                let k = ["text", "content", "role", "type", "x"][rng.gen_range(0..5)];
                m.insert(k.into(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

fn random_text(rng: &mut StdRng) -> String {
    let parts = ["hi", " ", "é", "日本", "\"", "\\", "\n", "x", "\u{1F600}"];
    (0..rng.gen_range(0..6))
        .map(|_| parts[rng.gen_range(0..parts.len())])
        .collect()
}

fn random_body(rng: &mut StdRng) -> String {
    let fields = [
        "model",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "messages",
        "prompt",
        "input",
        "system",
        "metadata",
        "stream_options",
        "temperature",
        "user",
    ];
    let mut parts = Vec::new();
    for _ in 0..rng.gen_range(0..9) {
        let k = fields[rng.gen_range(0..fields.len())];
        let v = match (k, rng.gen_range(0..3)) {
            ("model", 0) => json!(random_text(rng)),
            ("messages", 0) => json!([{"role": "user", "content": random_text(rng)}]),
            ("metadata", 0) => json!({"run": random_text(rng), "n": 1}),
            ("stream_options", 0) => json!({"include_usage": rng.gen_bool(0.5)}),
            _ => random_value(rng, 0),
        };
        // Repeated keys are part of the test: they are kept in the text.
        parts.push(format!("{}:{}", json!(k), v));
    }
    let sep = [",", " , ", ",\n"][rng.gen_range(0..3)];
    format!("{{{}}}", parts.join(sep))
}

/// The raw read against a parsed tree (which keeps the last of repeated keys) on thousands of
/// generated bodies: the same fields, estimate and metadata, and the upstream body is the tree
/// with `model` (and `stream_options.include_usage`) set.
#[test]
fn agrees_with_a_parsed_tree_on_generated_bodies() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..5_000 {
        let text = random_body(&mut rng);
        let tree = value(text.as_bytes());
        let b = body(&text);
        let read = |name: &str| b.field(name).map(|j| value(j.0.as_bytes()));
        for name in [
            "model",
            "stream",
            "max_tokens",
            "metadata",
            "stream_options",
        ] {
            assert_eq!(read(name).as_ref(), tree.get(name), "{name} of {text}");
        }
        let non_empty = tree["messages"].as_array().is_some_and(|m| !m.is_empty());
        assert_eq!(b.has_messages(), non_empty, "{text}");
        for name in ["prompt", "input"] {
            let kind = tree.get(name).map(|v| match v {
                Value::Null => Kind::Null,
                Value::Bool(_) => Kind::Bool,
                Value::Number(_) => Kind::Number,
                Value::String(_) => Kind::String,
                Value::Array(_) => Kind::Array,
                Value::Object(_) => Kind::Object,
            });
            assert_eq!(b.kind_of(name), kind, "{name} of {text}");
        }
        assert_eq!(b.prompt_estimate(), estimate_prompt(&tree), "{text}");
        let mut meta: Vec<(String, String)> = tree
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        meta.truncate(16);
        assert_eq!(b.metadata(16, 64, 512), meta, "{text}");
        let ask = rng.gen_bool(0.5);
        let mut want = tree.clone();
        if let Value::Object(o) = &mut want {
            o.insert("model".into(), json!("up"));
            if ask {
                match o.get_mut("stream_options") {
                    Some(Value::Object(opts)) => {
                        opts.insert("include_usage".into(), json!(true));
                    }
                    Some(_) => {}
                    None => {
                        o.insert("stream_options".into(), json!({"include_usage": true}));
                    }
                }
            }
        }
        assert_eq!(value(&b.passthrough("up", ask).unwrap()), want, "{text}");
        assert_eq!(b.tree().unwrap(), &tree);
    }
}
