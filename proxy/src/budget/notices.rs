//! The decision notice subscription: the aggregator publishes the scope ref of every decision
//! change; the cached decisions of that scope are dropped so the next request re-reads them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tollgate_schemas::redis_keys;

use super::gate::Inner;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keep a subscription to the notices channel until `stop`.
pub(super) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let channel = redis_keys::budget_notices(&inner.prefix);
    let mut backoff = MIN_BACKOFF;
    loop {
        let subscribed = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = subscribe(&inner, &channel) => r,
        };
        match subscribed {
            Ok(mut pubsub) => {
                backoff = MIN_BACKOFF;
                // Notices may have been missed while unsubscribed.
                inner.invalidate_all();
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = stopped(&mut stop) => return,
                        m = messages.next() => match m {
                            Some(msg) => {
                                let scope: String = msg.get_payload().unwrap_or_default();
                                tracing::debug!(scope, "budget decision notice");
                                inner.invalidate(&scope).await;
                            }
                            None => break,
                        },
                    }
                }
                tracing::debug!("budget notice subscription lost; resubscribing");
            }
            Err(e) => tracing::debug!(error = %e, "cannot subscribe to budget notices"),
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(inner: &Inner, channel: &str) -> Result<redis::aio::PubSub, String> {
    let fut = async {
        let mut pubsub = inner.target.pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(Duration::from_secs(2), fut).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
