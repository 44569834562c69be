//! Coalescing a settle batch: the finished requests of one entity that were counted in the same
//! buckets become one correction (summed deltas, every lease they release), so a batch costs
//! one hash read and write per entity and bucket instead of per request.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_schemas::redis_keys::LimitEntity;

use super::decision::Target;
use super::local::Adjust;

/// One request's corrections, as queued for the batcher.
#[derive(Debug)]
pub struct Settle {
    /// Corrections per entity of the request.
    pub adjustments: Vec<Adjust>,
    /// The request's concurrency lease id, if it took one.
    pub lease: Option<Arc<str>>,
}

/// The summed corrections of one entity's bucket pair.
#[derive(Debug)]
pub struct Correction<'a> {
    /// The entity (its keys and which windows it uses).
    pub target: &'a Target,
    /// Minute bucket argument (empty when the entity has no minute limit).
    pub minute: String,
    /// Day bucket argument (empty when the entity has no day limit).
    pub day: String,
    /// Requests to add (refunds are negative).
    pub requests: i64,
    /// Tokens to add.
    pub tokens: i64,
    /// Leases to drop, comma-separated (lease ids are hex).
    pub leases: String,
}

/// Merge the corrections of `batch` per (entity, minute bucket, day bucket), in first-seen
/// order; corrections that change nothing are left out.
pub fn coalesce(batch: &[Settle]) -> Vec<Correction<'_>> {
    let mut out: Vec<Correction<'_>> = Vec::new();
    let mut index: HashMap<(LimitEntity, &str, i64, i64), usize> = HashMap::new();
    for s in batch {
        for a in &s.adjustments {
            let t = &a.target;
            let lease = match (a.release && t.leases(), &s.lease) {
                (true, Some(id)) => Some(&**id),
                _ => None,
            };
            if a.requests == 0 && a.tokens == 0 && lease.is_none() {
                continue;
            }
            let minute = if t.uses_minute() { a.minute_bucket } else { -1 };
            let day = if t.uses_day() { a.day_bucket } else { -1 };
            let i = *index
                .entry((t.entity, &t.id, minute, day))
                .or_insert_with(|| {
                    let arg = |b: i64| if b < 0 { String::new() } else { b.to_string() };
                    out.push(Correction {
                        target: t,
                        minute: arg(minute),
                        day: arg(day),
                        requests: 0,
                        tokens: 0,
                        leases: String::new(),
                    });
                    out.len() - 1
                });
            let c = &mut out[i];
            c.requests += a.requests;
            c.tokens += a.tokens;
            if let Some(id) = lease {
                if !c.leases.is_empty() {
                    c.leases.push(',');
                }
                c.leases.push_str(id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::RateLimit;

    fn target(entity: LimitEntity, id: &str, concurrency: Option<u64>) -> Target {
        Target {
            entity,
            id: id.into(),
            limit: RateLimit {
                rpm: Some(10),
                tpm: Some(1000),
                concurrency,
                ..RateLimit::default()
            },
            reserve: 100,
        }
    }

    fn adjust(t: &Target, minute: i64, tokens: i64, release: bool) -> Adjust {
        Adjust {
            target: t.clone(),
            minute_bucket: minute,
            day_bucket: 7,
            requests: 0,
            tokens,
            release,
        }
    }

    #[test]
    fn merges_per_entity_and_bucket_and_joins_leases() {
        let key = target(LimitEntity::Key, "k1", Some(4));
        let model = target(LimitEntity::Model, "m1", None);
        let batch = vec![
            Settle {
                adjustments: vec![adjust(&key, 5, -40, true), adjust(&model, 5, -40, false)],
                lease: Some("aa".into()),
            },
            Settle {
                adjustments: vec![adjust(&key, 5, -10, true), adjust(&model, 5, -10, false)],
                lease: Some("bb".into()),
            },
            // Next minute bucket: its own correction.
            Settle {
                adjustments: vec![adjust(&key, 6, 25, true)],
                lease: Some("cc".into()),
            },
            // Changes nothing: left out.
            Settle {
                adjustments: vec![adjust(&model, 6, 0, false)],
                lease: None,
            },
        ];
        let c = coalesce(&batch);
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].target.id.as_ref(), c[0].tokens), ("k1", -50));
        assert_eq!(c[0].leases, "aa,bb");
        assert_eq!((c[0].minute.as_str(), c[0].day.as_str()), ("5", ""));
        assert_eq!((c[1].target.id.as_ref(), c[1].tokens), ("m1", -50));
        assert_eq!(c[1].leases, "");
        assert_eq!((c[2].minute.as_str(), c[2].tokens), ("6", 25));
        assert_eq!(c[2].leases, "cc");
    }

    #[test]
    fn refunds_sum_requests_and_a_lease_alone_is_kept() {
        let key = target(LimitEntity::Key, "k1", Some(1));
        let mut refund = adjust(&key, 5, -100, false);
        refund.requests = -1;
        let batch = vec![
            Settle {
                adjustments: vec![refund],
                lease: None,
            },
            Settle {
                adjustments: vec![adjust(&key, 9, 0, true)],
                lease: Some("dd".into()),
            },
        ];
        let c = coalesce(&batch);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].requests, c[0].tokens, c[0].leases.as_str()),
            (-1, -100, "")
        );
        assert_eq!(
            (c[1].requests, c[1].tokens, c[1].leases.as_str()),
            (0, 0, "dd")
        );
    }
}
