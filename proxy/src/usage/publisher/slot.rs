//! The current Kafka producer, replaceable after an outage.
//!
//! After idempotent messages time out, librdkafka must bump the producer epoch (KIP-360) before
//! it produces again. Brokers without that support (Tansu 0.6 panics on the request) never accept
//! events from that producer again. So once a producer's deliveries failed, the replayer swaps in
//! a fresh one (a new producer id needs no bump) before probing the broker; the old one is
//! purged, its unacknowledged events come back through the delivery reports and are spooled.

use std::sync::{Arc, RwLock};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, ThreadedProducer};

use super::shared::{Delivery, Origin, Shared};

type Record<'a, K, P> = BaseRecord<'a, K, P, Box<Origin>>;

pub(super) struct ProducerSlot {
    config: ClientConfig,
    shared: Arc<Shared>,
    /// Replace failed producers (only needed, and only done, with idempotence).
    replace_failed: bool,
    current: RwLock<(u64, ThreadedProducer<Delivery>)>,
}

impl ProducerSlot {
    pub(super) fn new(config: ClientConfig, shared: Arc<Shared>) -> Result<Self, KafkaError> {
        let replace_failed = config.get("enable.idempotence") == Some("true");
        let producer = create(&config, &shared, 0)?;
        Ok(Self {
            config,
            shared,
            replace_failed,
            current: RwLock::new((0, producer)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (u64, ThreadedProducer<Delivery>)> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Produce with the current producer (never blocks).
    // Same shape as rdkafka's own `send`: the record comes back on error.
    #[allow(clippy::result_large_err)]
    pub(super) fn send<'a, K, P>(
        &self,
        record: Record<'a, K, P>,
    ) -> Result<(), (KafkaError, Record<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.read().1.send(record)
    }

    /// Generation of the current producer (delivery reports carry it).
    pub(super) fn generation(&self) -> u64 {
        self.read().0
    }

    /// A handle to the current producer, for blocking calls (flush, purge) off the runtime.
    pub(super) fn current(&self) -> ThreadedProducer<Delivery> {
        self.read().1.clone()
    }

    /// If the current producer had failed deliveries, swap in a new one and return the old
    /// one, which the caller must drop off the async runtime (dropping purges and joins).
    pub(super) fn replace_if_failed(&self) -> Option<ThreadedProducer<Delivery>> {
        if !self.replace_failed || !self.shared.producer_failed(self.generation()) {
            return None;
        }
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = guard.0 + 1;
        match create(&self.config, &self.shared, generation) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *guard, (generation, fresh));
                tracing::info!(
                    generation,
                    "usage producer replaced after failed deliveries"
                );
                Some(old.1)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new usage producer");
                None
            }
        }
    }
}

fn create(
    config: &ClientConfig,
    shared: &Arc<Shared>,
    generation: u64,
) -> Result<ThreadedProducer<Delivery>, KafkaError> {
    config.create_with_context(Delivery {
        shared: shared.clone(),
        generation,
    })
}
