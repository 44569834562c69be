//! Poison messages and rows ClickHouse refuses land in `usage_dead_letters` (with reason and
//! raw payload) exactly once, and the partition keeps flowing; `proxy_seq` gaps and duplicates
//! show in the metrics and in `usage_sequence_health`.

mod aggregator_support;

use std::time::Duration;

use aggregator_support as support;
use clickhouse::Row;
use serde::Deserialize;
use tollgate_schemas::UsageEvent;

const PROXY: &str = "proxy-poison-test";

fn event(seq: i64, request_id: &str) -> anyhow::Result<Vec<u8>> {
    let ev = UsageEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        request_id: request_id.into(),
        ts_ms: 1_763_700_000_000 + seq,
        proxy_id: PROXY.into(),
        proxy_seq: seq,
        api_key_id: "key_p".into(),
        account_id: "acct_p".into(),
        model: "m".into(),
        status_code: 200,
        latency_us: 1_000,
        prompt_tokens: 3,
        completion_tokens: 4,
        cost_nanos: 11_000,
        attempts: 1,
        ..Default::default()
    };
    Ok(tollgate_schemas::encode(&ev)?)
}

#[derive(Debug, Row, Deserialize)]
struct Dead {
    kafka_offset: i64,
    reason: String,
    error: String,
    payload_hex: String,
    proxy_seq: i64,
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_and_refused_rows_are_dead_lettered_once_and_the_partition_flows() {
    tollgate_e2e::init_tracing();
    let brokers = tollgate_e2e::brokers();
    let topic = tollgate_e2e::unique("t_agg_poison");
    let database = tollgate_e2e::unique("tg_agg_poison");
    tollgate_e2e::create_topic(&topic, 1).await.unwrap();
    let ch = tollgate_e2e::clickhouse();
    tollgate_schemas::migrate::run(&ch, &database)
        .await
        .unwrap();
    let db = ch.with_database(&database);
    // A guard that refuses one row for its content (as a constraint would on modern servers).
    db.query(
        "ALTER TABLE usage_events ADD COLUMN guard UInt8 DEFAULT throwIf(request_id = 'bad-row')",
    )
    .execute()
    .await
    .unwrap();

    // Offsets: 0..=5 events (seq 1..=6), 6 not Avro, 7 unknown schema, 8 truncated Avro,
    // 9 refused row (seq 7); produced before the aggregator starts (a backlog).
    let producer = support::producer(&brokers).unwrap();
    let mut expected_events = 0;
    for seq in 1..=6 {
        support::produce_raw(&producer, &topic, 0, &event(seq, "ok").unwrap())
            .await
            .unwrap();
        expected_events += 1;
    }
    let not_avro = b"this is not avro at all".to_vec();
    let unknown = b"\xC3\x01\x01\x02\x03\x04\x05\x06\x07\x08\x02".to_vec();
    let mut truncated = event(100, "ok").unwrap();
    truncated.truncate(24);
    for payload in [&not_avro, &unknown, &truncated] {
        support::produce_raw(&producer, &topic, 0, payload)
            .await
            .unwrap();
    }
    assert_eq!(
        support::produce_raw(&producer, &topic, 0, &event(7, "bad-row").unwrap())
            .await
            .unwrap(),
        9
    );

    let mut cfg = support::config(&brokers, &topic, &database);
    cfg.batch.max_rows = 16;
    cfg.batch.max_wait_ms = 100;
    cfg.sequence.window = 256;
    let agg = tollgate_aggregator::start(cfg.clone()).await.unwrap();
    let base = format!("http://{}", agg.local_addr());
    let stored = || async {
        Ok::<u64, anyhow::Error>(
            support::count(&db, "usage_events").await?
                + support::count(&db, "usage_dead_letters").await?,
        )
    };
    support::wait_until("the backlog stored", Duration::from_secs(60), || async {
        Ok(stored().await? >= 10)
    })
    .await
    .unwrap();
    // Gaps are judged once the lag sampler saw the instance caught up.
    support::wait_until("gap accounting on", Duration::from_secs(30), || async {
        Ok(agg.gaps_reliable())
    })
    .await
    .unwrap();

    // Then live traffic: seq 9..=300 (8 missing: a gap) with seq 12 twice, in steps of 50 so
    // the instance never lags; the gap window (256) has passed seq 8 by the end.
    let mut seqs: Vec<i64> = (9..=300).collect();
    seqs.insert(10, 12);
    for step in seqs.chunks(50) {
        for &seq in step {
            support::produce_raw(&producer, &topic, 0, &event(seq, "ok").unwrap())
                .await
                .unwrap();
            expected_events += 1;
        }
        let want = 10 + expected_events - 6;
        support::wait_until("live events stored", Duration::from_secs(30), || async {
            Ok(stored().await? >= want)
        })
        .await
        .unwrap();
    }
    let total = support::total_messages(&brokers, &topic, 1).unwrap();
    assert_eq!(total, 6 + 3 + 1 + 293);
    assert_eq!(stored().await.unwrap(), total);
    support::wait_until("offsets committed", Duration::from_secs(30), || async {
        Ok(
            support::committed(&brokers, &cfg.kafka.group_id, &topic, 1)?.get(&0)
                == Some(&(total as i64)),
        )
    })
    .await
    .unwrap();

    assert_eq!(
        support::count(&db, "usage_events").await.unwrap(),
        expected_events
    );
    let mut dead: Vec<Dead> = db
        .query("SELECT kafka_offset, reason, error, payload_hex, proxy_seq FROM usage_dead_letters ORDER BY kafka_offset")
        .fetch_all()
        .await
        .unwrap();
    let reasons: Vec<(i64, &str)> = dead
        .iter()
        .map(|d| (d.kafka_offset, d.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (6, "not_avro"),
            (7, "unknown_schema"),
            (8, "malformed_datum"),
            (9, "clickhouse_rejected")
        ]
    );
    assert_eq!(dead[0].payload_hex, support::hex(&not_avro));
    assert_eq!(dead[2].payload_hex, support::hex(&truncated));
    assert!(dead[0].error.contains("C3 01"), "{}", dead[0].error);
    assert!(dead[3].error.contains("395"), "{}", dead[3].error);
    assert_eq!(dead[3].proxy_seq, 7);
    dead.clear();

    // Gap (seq 8) and duplicate (seq 12): in ClickHouse, and in the aggregator's counters.
    let health: (u64, i64, i64, i64, i64) = db
        .query("SELECT events, min_seq, max_seq, gaps, duplicates FROM usage_sequence_health WHERE proxy_id = ?")
        .bind(PROXY)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(health, (expected_events + 1, 1, 300, 1, 1));
    let stats = agg.stats();
    assert_eq!(stats.gaps.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let (status, metrics) = support::get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(status, 200);
    use tollgate_schemas::telemetry as t;
    assert_eq!(
        metric(
            &metrics,
            &format!("{}{{reason=\"not_avro\"}}", t::AGG_DEAD_LETTERS)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("{}{{reason=\"clickhouse_rejected\"}}", t::AGG_DEAD_LETTERS)
        ),
        1.0
    );
    assert!(
        metric(
            &metrics,
            &format!("{}{{kind=\"bad_data\"}}", t::AGG_CLICKHOUSE_ERRORS)
        ) >= 1.0
    );
    assert_eq!(metric(&metrics, t::AGG_GAPS), 1.0);
    assert_eq!(metric(&metrics, t::AGG_DUPLICATES), 1.0);
    assert_eq!(metric(&metrics, t::AGG_INSERTED), expected_events as f64);
    assert_eq!(metric(&metrics, t::AGG_CONSUMED), total as f64);
    assert!(
        metrics.contains(&format!("{}_bucket", t::AGG_BATCH_ROWS)),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("{}_count", t::AGG_INSERT_DURATION)));
    support::wait_until("lag gauge", Duration::from_secs(10), || async {
        let (_, m) = support::get(&format!("{base}/metrics")).await?;
        Ok(m.contains(&format!("{}{{partition=\"0\"}} 0", t::AGG_LAG)))
    })
    .await
    .unwrap();
    assert_eq!(
        support::get(&format!("{base}/healthz")).await.unwrap().0,
        200
    );
    assert_eq!(
        support::get(&format!("{base}/readyz")).await.unwrap().0,
        200
    );
    agg.shutdown().await;

    // A new group reads the topic from the start: everything is skipped as stored, in both
    // tables; nothing is stored twice.
    let mut again = cfg.clone();
    again.kafka.group_id = tollgate_e2e::unique("g2");
    let agg2 = tollgate_aggregator::start(again).await.unwrap();
    let stats2 = agg2.stats();
    support::wait_until("replay skipped", Duration::from_secs(60), || async {
        Ok(stats2
            .skipped_stored
            .load(std::sync::atomic::Ordering::Relaxed)
            >= total)
    })
    .await
    .unwrap();
    assert_eq!(
        stats2
            .skipped_stored
            .load(std::sync::atomic::Ordering::Relaxed),
        total
    );
    assert_eq!(
        stats2.inserted.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        support::count(&db, "usage_events").await.unwrap(),
        expected_events
    );
    assert_eq!(support::count(&db, "usage_dead_letters").await.unwrap(), 4);
    agg2.shutdown().await;
}
