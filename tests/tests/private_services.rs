//! Private service instances (for fault tests) start, stop and resume with their data.

use tollgate_e2e::private::{PrivateService, ServiceKind};

#[tokio::test]
async fn private_broker_keeps_topics_across_restart() {
    let kafka = PrivateService::start(ServiceKind::Kafka).unwrap();
    tollgate_e2e::create_topic_on(&kafka.brokers(), "private.check", 2)
        .await
        .unwrap();
    kafka.stop().unwrap();
    kafka.resume().unwrap();
    // Creating it again reports "already exists", which create_topic_on accepts.
    tollgate_e2e::create_topic_on(&kafka.brokers(), "private.check", 2)
        .await
        .unwrap();
    assert!(kafka.state_dir().join("tansu").exists());
}

#[tokio::test]
async fn private_clickhouse_answers_on_its_own_port() {
    let ch = PrivateService::start(ServiceKind::ClickHouse).unwrap();
    let body = reqwest::get(format!("{}/ping", ch.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "Ok.");
}
