//! An aggregator that consumes several partitions writes them in one INSERT per round (not
//! one per partition), still exactly once, and commits each partition's offset after it.

mod aggregator_support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregator_support as support;
use futures::future::try_join_all;
use std::sync::atomic::Ordering;
use tollgate_schemas::UsageEvent;

const PARTITIONS: i32 = 4;

fn event(seq: i64) -> anyhow::Result<Vec<u8>> {
    let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let ev = UsageEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        request_id: format!("req-{seq}"),
        ts_ms,
        proxy_id: "proxy-batching-test".into(),
        proxy_seq: seq,
        api_key_id: "key_b".into(),
        account_id: "acct_b".into(),
        model: "m".into(),
        status_code: 200,
        attempts: 1,
        ..Default::default()
    };
    Ok(tollgate_schemas::encode(&ev)?)
}

/// `per_partition` fresh events into every partition, all in flight at once.
async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    first_seq: i64,
    per_partition: i64,
) -> anyhow::Result<()> {
    let payloads: Vec<(i32, Vec<u8>)> = (0..PARTITIONS)
        .flat_map(|p| (0..per_partition).map(move |i| (p, first_seq + i64::from(p) * 10_000 + i)))
        .map(|(p, seq)| Ok((p, event(seq)?)))
        .collect::<anyhow::Result<_>>()?;
    try_join_all(
        payloads
            .iter()
            .map(|(p, bytes)| support::produce_raw(producer, topic, *p, bytes)),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_share_one_insert_per_round_and_are_stored_once() {
    tollgate_e2e::init_tracing();
    let brokers = tollgate_e2e::brokers();
    let topic = tollgate_e2e::unique("t_agg_batching");
    let database = tollgate_e2e::unique("tg_agg_batching");
    tollgate_e2e::create_topic(&topic, PARTITIONS)
        .await
        .unwrap();
    let ch = tollgate_e2e::clickhouse();
    tollgate_schemas::migrate::run(&ch, &database)
        .await
        .unwrap();
    let db = ch.with_database(&database);
    let producer = support::producer(&brokers).unwrap();

    // A backlog in every partition before the aggregator starts.
    produce(&producer, &topic, 0, 200).await.unwrap();

    let mut cfg = support::config(&brokers, &topic, &database);
    cfg.batch.max_rows = 2_000;
    cfg.batch.max_wait_ms = 300;
    let agg = tollgate_aggregator::start(cfg.clone()).await.unwrap();
    let stats = agg.stats();

    // Counted by the aggregator once ClickHouse acknowledged the rows, together with the
    // insert (polling ClickHouse itself could see the rows before the insert is counted).
    let stored = |n: u64| {
        let stats = stats.clone();
        async move {
            support::wait_until("rows stored", Duration::from_secs(60), || async {
                Ok(stats.inserted.load(Ordering::Relaxed) >= n)
            })
            .await
        }
    };
    stored(800).await.unwrap();
    let first = stats.batches.load(Ordering::Relaxed);
    // One insert per partition would be 4.
    assert!(
        (1..=2).contains(&first),
        "{first} inserts for a backlog in 4 partitions"
    );

    // Live traffic into every partition: again one shared insert (two if a partition's
    // messages straddle a round).
    produce(&producer, &topic, 1_000, 50).await.unwrap();
    stored(1_000).await.unwrap();
    let second = stats.batches.load(Ordering::Relaxed) - first;
    assert!(
        (1..=2).contains(&second),
        "{second} inserts for one round of 4 partitions"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        support::uniqueness(&db).await.unwrap(),
        (1_000, 1_000, 1_000)
    );
    // Every partition's offset is committed after its rows.
    support::wait_until("offsets committed", Duration::from_secs(20), || async {
        let committed = support::committed(&brokers, &cfg.kafka.group_id, &topic, PARTITIONS)?;
        Ok((0..PARTITIONS).all(|p| committed.get(&p) == Some(&250)))
    })
    .await
    .unwrap();
    agg.shutdown().await;
}
