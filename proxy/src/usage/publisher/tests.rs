use std::path::Path;
use std::time::Duration;

use super::shared::{test_shared, ReplayBatch};
use super::*;
use crate::usage::spool::SpoolConfig;

fn spool_cfg(dir: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        max_bytes,
        fsync_interval_ms: 50,
    }
}

fn kafka_cfg(dir: &Path) -> KafkaConfig {
    KafkaConfig {
        enabled: true,
        // Nothing listens on port 1: every delivery fails.
        brokers: "127.0.0.1:1".into(),
        topic: "t".into(),
        queue_capacity: 1000,
        idempotence: true,
        linger_ms: 5,
        compression: crate::config::Compression::Lz4,
        spool: spool_cfg(dir, 1 << 20),
    }
}

#[test]
fn spooling_counts_and_drops_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let shared = test_shared(Some(Spool::open(&spool_cfg(dir.path(), 4096)).unwrap()));
    assert!(!shared.has_backlog());
    for _ in 0..200 {
        shared.spool_event(b"acct", &[7u8; 100], true);
    }
    let c = shared.stats.counts();
    assert!(shared.has_backlog());
    assert!(c.spooled > 10, "{c:?}");
    assert_eq!(c.spooled + c.dropped, 200, "{c:?}");
    assert_eq!(c.spool_events, c.spooled);
    assert!(c.spool_bytes > 0 && c.spool_bytes <= 4096);
}

#[test]
fn a_disabled_spool_drops_and_counts() {
    let shared = test_shared(None);
    shared.spool_event(b"k", b"v", true);
    let c = shared.stats.counts();
    assert_eq!((c.spooled, c.dropped), (0, 1));
    assert!(!shared.has_backlog());
}

#[test]
fn partly_failed_replay_batch_goes_back_to_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let shared = test_shared(Some(Spool::open(&spool_cfg(dir.path(), 1 << 20)).unwrap()));
    for i in 0..4u8 {
        shared.spool_event(b"k", &[i; 10], true);
    }
    let batch = shared.with_spool(|s| s.read_batch(3)).unwrap().unwrap();
    shared.respool_and_ack(&batch, &[1]);
    let rest = shared.with_spool(|s| s.read_batch(10)).unwrap().unwrap();
    let firsts: Vec<u8> = rest.events.iter().map(|e| e.value[0]).collect();
    assert_eq!(firsts, [3, 1]);
    let c = shared.stats.counts();
    assert_eq!((c.spooled, c.spool_events, c.dropped), (4, 2, 0));
}

#[tokio::test]
async fn replay_batch_completes_once_per_event() {
    let b = std::sync::Arc::new(ReplayBatch::new(3));
    b.complete(0, true);
    b.complete(0, false); // a second report for the same event is ignored
    b.complete(2, false);
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.wait().await }
    });
    b.complete(1, true);
    tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.failed(), [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_a_broker_spools_everything_for_the_next_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_cfg(dir.path());
    let (publisher, sink) = Publisher::start(&cfg).unwrap();
    let ids: Vec<String> = (0..20).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        sink.submit(UsageEvent {
            account_id: format!("acct_{}", i % 2),
            event_id: id.clone(),
            ..UsageEvent::default()
        });
    }
    drop(sink);
    let stats = publisher.stats();
    publisher.shutdown(Duration::from_millis(500)).await;
    let c = stats.counts();
    assert_eq!(c.submitted, 20, "{c:?}");
    assert_eq!(c.delivered, 0, "{c:?}");
    assert_eq!(c.dropped, 0, "{c:?}");
    assert_eq!(c.spooled, 20, "{c:?}");

    // The directory is unlocked and the next process finds every event, in order.
    let spool = Spool::open(&cfg.spool).unwrap();
    assert_eq!(spool.pending_events(), 20);
    let batch = spool.read_batch(100).unwrap();
    let spooled: Vec<String> = batch
        .events
        .iter()
        .map(|e| tollgate_schemas::decode(&e.value).unwrap().event_id)
        .collect();
    assert_eq!(spooled, ids);
    assert_eq!(batch.events[1].key, b"acct_1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_off_discards_events_and_touches_no_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("never-created");
    let mut cfg = kafka_cfg(&spool_dir);
    cfg.enabled = false;
    cfg.brokers.clear();
    let (publisher, sink) = Publisher::start(&cfg).unwrap();
    sink.submit(UsageEvent::default());
    let stats = publisher.stats();
    publisher.shutdown(Duration::from_millis(100)).await;
    assert_eq!(stats.counts(), PublisherCounts::default());
    assert!(!spool_dir.exists(), "metering off must not open a spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_spool_directory_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Spool::open(&spool_cfg(dir.path(), 1 << 20)).unwrap();
    let err = Publisher::open(&kafka_cfg(dir.path())).unwrap_err();
    assert!(matches!(err, PublisherError::Spool(_)), "{err}");
}
