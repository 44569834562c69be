//! Golden Avro fixtures: every `avro/fixtures/*.bin` must keep decoding to its `.json` twin,
//! whatever the current schema is. Regenerate (only when adding a new schema version) with
//! `TOLLGATE_BLESS=1 cargo test -p tollgate-schemas --test golden`, which writes the fixture of
//! the current schema version if it is missing.

use std::collections::HashMap;
use std::path::PathBuf;

use tollgate_schemas::{decode, encode, UsageEvent};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("avro/fixtures")
}

fn current_fixture() -> UsageEvent {
    UsageEvent {
        event_id: "019a8f5e-1c2b-7d3e-9f40-5a6b7c8d9e0f".into(),
        request_id: "req-golden-1".into(),
        ts_ms: 1_763_700_000_123,
        proxy_id: "proxy-golden".into(),
        proxy_seq: 7,
        api_key_id: "key_golden".into(),
        account_id: "acct_golden".into(),
        team_id: "team_golden".into(),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        upstream_model: "gpt-4o-mini-2024-07-18".into(),
        endpoint: "chat.completions".into(),
        stream: true,
        status_code: 200,
        error_type: None,
        latency_us: 250_000,
        upstream_latency_us: 249_000,
        ttft_us: Some(80_000),
        prompt_tokens: 120,
        completion_tokens: 48,
        cached_tokens: 64,
        usage_estimated: false,
        cost_nanos: 42_000,
        attempts: 1,
        metadata: HashMap::from([("run_id".to_string(), "golden".to_string())]),
    }
}

#[test]
fn every_fixture_still_decodes_to_its_expectation() {
    let version = tollgate_schemas::event::KNOWN_SCHEMAS.len();
    let bin = dir().join(format!("usage_event_v{version}.bin"));
    if std::env::var_os("TOLLGATE_BLESS").is_some() && !bin.exists() {
        let ev = current_fixture();
        std::fs::write(&bin, encode(&ev).unwrap()).unwrap();
        std::fs::write(
            bin.with_extension("json"),
            serde_json::to_string_pretty(&ev).unwrap(),
        )
        .unwrap();
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            let bytes = std::fs::read(&path).unwrap();
            let expected: UsageEvent = serde_json::from_str(
                &std::fs::read_to_string(path.with_extension("json")).unwrap(),
            )
            .unwrap();
            assert_eq!(decode(&bytes).unwrap(), expected, "{}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= version,
        "one fixture per schema version: found {checked}, versions {version}"
    );
}

#[test]
fn current_schema_fixture_is_byte_stable() {
    let version = tollgate_schemas::event::KNOWN_SCHEMAS.len();
    let bin = dir().join(format!("usage_event_v{version}.bin"));
    assert_eq!(
        encode(&current_fixture()).unwrap(),
        std::fs::read(bin).unwrap()
    );
}
