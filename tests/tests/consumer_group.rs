//! Two aggregators in one consumer group share the partitions; every event is stored exactly
//! once, also when one of them leaves in the middle.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tollgate_e2e::TestStack;
use tollgate_loadtest::MockConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_aggregators_share_partitions_without_loss_or_duplicates() {
    let stack = TestStack::start("group", 4, MockConfig::default())
        .await
        .unwrap();
    let group = tollgate_e2e::unique("g");
    let a = stack.aggregator(&group).await.unwrap();
    let b = stack.aggregator(&group).await.unwrap();
    let (sa, sb) = (a.stats(), b.stats());

    // Wait until both members hold partitions (each saw at least one assignment).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sa.rebalances.load(Ordering::Relaxed) == 0 || sb.rebalances.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "group never formed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(stack.load_all_accounts(50, 0.25).await.unwrap(), 200);
    stack
        .wait_for_rows(200, Duration::from_secs(90))
        .await
        .unwrap();
    let (ia, ib) = (
        sa.inserted.load(Ordering::Relaxed),
        sb.inserted.load(Ordering::Relaxed),
    );
    assert_eq!(ia + ib, 200);
    assert!(
        ia > 0 && ib > 0,
        "both members must store rows: a={ia} b={ib}"
    );

    // One member leaves; the other takes over its partitions and continues exactly once.
    a.shutdown().await;
    assert_eq!(stack.load_all_accounts(25, 0.25).await.unwrap(), 100);
    stack
        .wait_for_rows(300, Duration::from_secs(90))
        .await
        .unwrap();

    let (rows, distinct): (u64, u64) = stack
        .db()
        .query("SELECT count(), uniqExact(event_id) FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((rows, distinct), (300, 300));
    let partitions: u64 = stack
        .db()
        .query("SELECT uniqExact(kafka_partition) FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    assert!(partitions > 1, "events are spread over partitions");
    b.shutdown().await;
    stack.proxy.shutdown().await;
}
