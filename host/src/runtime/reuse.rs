//! Decisions kept for reuse (`keygate:gateway/reusable-policy`). A request identical to one the
//! guest decided before, under the same component and configuration, is forwarded on that
//! decision without calling the guest, while the guest's offer lasts and the key verdicts it
//! rested on stay fresh. Only the request id changes from one reuse to the next.
//!
//! Each request thread keeps its own decisions, at most `guest.reuse_decisions` of them: no
//! lock and no shared cache line on the request path. A swap (a new component + configuration
//! pair) starts every thread afresh; a key invalidated, or a cache cleared or made stale, ends
//! every decision at once (the key cache's revision moves).

use super::component::Reuse;
use super::component::policy_api::RequestHead;
use crate::capabilities::key_cache::{KeyCache, Reads};
use crate::proxy::plan::{Forwarding, ValidPlan};
use lru::LruCache;
use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Heads over this many bytes (headers, path and authority together) are never kept: one
/// kept decision stays under about 5 KiB, so a thread's share is bounded by the setting.
pub const MAX_KEPT_HEAD: usize = 4096;

/// A number no other component + configuration pair of this process has: what a thread's
/// kept decisions belong to.
pub fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One component + configuration pair's decisions, as a thread keeps them.
struct Kept {
    generation: u64,
    decisions: LruCache<RequestHead, KeptDecision>,
}

struct KeptDecision {
    plan: Arc<ValidPlan>,
    /// The guest's offer, or the first key verdict read going stale, whichever comes first.
    until: Instant,
    /// The key cache's revision when the guest decided.
    key_cache_revision: u64,
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Where a thread keeps the decisions of `generation`, for the length of `f`. Those of any
/// other generation are dropped.
fn with_kept<R>(generation: u64, capacity: NonZeroUsize, f: impl FnOnce(&mut Kept) -> R) -> R {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let kept = match &mut *kept {
            Some(current) if current.generation == generation => current,
            other => other.insert(Kept {
                generation,
                decisions: LruCache::new(capacity),
            }),
        };
        f(kept)
    })
}

/// The plan kept for `head`, under a request id of its own; `None` when no decision is kept
/// for it or the one kept has lapsed (it is dropped then).
pub fn reused(
    generation: u64,
    capacity: u32,
    head: &RequestHead,
    key_cache: &KeyCache,
    now: Instant,
) -> Option<Forwarding> {
    let capacity = NonZeroUsize::new(capacity as usize)?;
    with_kept(generation, capacity, |kept| {
        let decision = kept.decisions.get(head)?;
        if now >= decision.until || decision.key_cache_revision != key_cache.revision() {
            kept.decisions.pop(head);
            return None;
        }
        Forwarding::again(&decision.plan)
    })
}

/// Keep `plan`, decided for `head`, for reuse as the guest offered and within the freshness of
/// the key verdicts its call read.
pub fn keep(
    generation: u64,
    capacity: u32,
    head: RequestHead,
    plan: &Arc<ValidPlan>,
    (reuse, reads): (Reuse, Reads),
    now: Instant,
) {
    let Some(capacity) = NonZeroUsize::new(capacity as usize) else {
        return;
    };
    // A plan whose id cannot be replaced everywhere is never forwarded again.
    let ids_replaceable =
        plan.request.request_id_at.is_some() && plan.response.headers.request_id_at.is_some();
    if head_size(&head) > MAX_KEPT_HEAD || !ids_replaceable {
        return;
    }
    let offered = now + Duration::from_millis(u64::from(reuse.for_ms));
    let until = reads
        .fresh_until
        .map_or(offered, |fresh| fresh.min(offered));
    if until <= now {
        return;
    }
    let decision = KeptDecision {
        plan: Arc::clone(plan),
        until,
        key_cache_revision: reads.revision,
    };
    with_kept(generation, capacity, |kept| {
        kept.decisions.put(head, decision);
    });
}

fn head_size(head: &RequestHead) -> usize {
    head.method.len()
        + head.scheme.len()
        + head.authority.len()
        + head.path_with_query.len()
        + head.headers.len()
        + head.client_ip.as_ref().map_or(0, String::len)
}

/// Identical heads: every field the guest read.
impl PartialEq for RequestHead {
    fn eq(&self, other: &Self) -> bool {
        self.path_with_query == other.path_with_query
            && self.headers == other.headers
            && self.authority == other.authority
            && self.method == other.method
            && self.scheme == other.scheme
            && self.client_ip == other.client_ip
            && self.local_port == other.local_port
    }
}

impl Eq for RequestHead {}

impl Hash for RequestHead {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.method.hash(state);
        self.scheme.hash(state);
        self.authority.hash(state);
        self.path_with_query.hash(state);
        self.headers.hash(state);
        self.client_ip.hash(state);
        self.local_port.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::key_cache::{Consumer, Verdict};
    use crate::proxy::plan::{ValidEdits, ValidResponseEdits};
    use crate::runtime::component::policy_api::Labels;
    use http::{HeaderName, HeaderValue};
    use std::sync::Arc;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn head(path: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "gw.test".into(),
            path_with_query: path.into(),
            headers: b"apikey: k1\r\naccept: */*\r\n".to_vec(),
            client_ip: Some("10.0.0.1".into()),
            local_port: 8000,
        }
    }

    fn plan() -> Arc<ValidPlan> {
        let value = |text: &str| HeaderValue::from_str(text).unwrap();
        let name = HeaderName::from_static;
        Arc::new(ValidPlan {
            service: "api".into(),
            uri: "http://127.0.0.1:9000/v1".parse().unwrap(),
            request: ValidEdits {
                remove: vec![name("apikey")],
                append: vec![
                    (name("x-consumer-id"), value("c1")),
                    (name("x-kong-request-id"), value(ID)),
                    (name("x-note"), value(&format!("id {ID}"))),
                ],
                request_id_at: Some(0b010),
            },
            response: ValidResponseEdits {
                headers: ValidEdits {
                    remove: vec![],
                    append: vec![(name("x-kong-request-id"), value(ID))],
                    request_id_at: Some(0b1),
                },
                via: None,
                server_if_absent: None,
                upstream_latency_header: None,
                proxy_latency_header: None,
            },
            first_byte_timeout: Duration::from_secs(1),
            between_bytes_timeout: Duration::from_secs(1),
            max_request_body: None,
            request_id: ID.into(),
            labels: Labels {
                route: Some("r".into()),
                service: Some("api".into()),
                consumer: None,
                key_lookup: Some("fresh".into()),
                auth_call_ms: None,
                rate_limit: None,
            },
        })
    }

    fn cache() -> Arc<KeyCache> {
        Arc::new(KeyCache::new(
            100,
            Duration::from_secs(1),
            Arc::new(crate::metrics::Metrics::default()),
        ))
    }

    fn offer(for_ms: u32, cache: &KeyCache, fresh_until: Option<Instant>) -> (Reuse, Reads) {
        let reads = Reads {
            revision: cache.revision(),
            only_fresh: true,
            fresh_until,
        };
        (Reuse { for_ms }, reads)
    }

    fn values<'a>(
        appended: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        name: &str,
    ) -> Vec<&'a str> {
        appended
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn an_identical_request_gets_the_kept_plan_with_a_new_id_wherever_the_old_one_stood() {
        let cache = cache();
        let now = Instant::now();
        keep(7, 10, head("/a"), &plan(), offer(60_000, &cache, None), now);
        let reused = reused(7, 10, &head("/a"), &cache, now).expect("kept");
        let id = reused.request_id.clone();
        assert_ne!(id, ID);
        let (request, response) = (&reused.plan.request, &reused.plan.response.headers);
        let appended = || reused.appended(request);
        assert_eq!(values(appended(), "x-kong-request-id"), [&*id]);
        assert_eq!(
            values(reused.appended(response), "x-kong-request-id"),
            [&*id]
        );
        // Only whole values are the id; everything else is as decided.
        assert_eq!(values(appended(), "x-note"), [format!("id {ID}")]);
        assert_eq!(values(appended(), "x-consumer-id"), ["c1"]);
        assert_eq!(reused.plan.uri, plan().uri);
        let again = reused_plan_id(&cache, now);
        assert_ne!(again, id, "each reuse gets its own id");
    }

    fn reused_plan_id(cache: &KeyCache, now: Instant) -> String {
        reused(7, 10, &head("/a"), cache, now).unwrap().request_id
    }

    #[test]
    fn a_head_that_differs_anywhere_is_decided_afresh() {
        let cache = cache();
        let now = Instant::now();
        keep(7, 10, head("/a"), &plan(), offer(60_000, &cache, None), now);
        let mut other_header = head("/a");
        other_header.headers = b"apikey: k2\r\naccept: */*\r\n".to_vec();
        let mut other_client = head("/a");
        other_client.client_ip = Some("10.0.0.2".into());
        let mut other_port = head("/a");
        other_port.local_port = 8443;
        let mut other_method = head("/a");
        other_method.method = "POST".into();
        for other in [
            head("/b"),
            other_header,
            other_client,
            other_port,
            other_method,
        ] {
            assert!(reused(7, 10, &other, &cache, now).is_none(), "{other:?}");
        }
        assert!(reused(7, 10, &head("/a"), &cache, now).is_some());
    }

    #[test]
    fn reuse_ends_with_the_offer_or_the_first_verdict_going_stale() {
        let cache = cache();
        let now = Instant::now();
        keep(7, 10, head("/a"), &plan(), offer(1_000, &cache, None), now);
        let soon = now + Duration::from_millis(999);
        assert!(reused(7, 10, &head("/a"), &cache, soon).is_some());
        assert!(reused(7, 10, &head("/a"), &cache, now + Duration::from_secs(1)).is_none());

        let stale_at = now + Duration::from_millis(200);
        keep(
            7,
            10,
            head("/b"),
            &plan(),
            offer(60_000, &cache, Some(stale_at)),
            now,
        );
        assert!(reused(7, 10, &head("/b"), &cache, now).is_some());
        assert!(reused(7, 10, &head("/b"), &cache, stale_at).is_none());
    }

    #[test]
    fn a_key_invalidated_or_a_cache_cleared_ends_every_kept_decision() {
        let cache = cache();
        let now = Instant::now();
        let fingerprint = [7u8; 32];
        let valid = Verdict::Valid(Consumer {
            id: Some("c1".into()),
            username: None,
            custom_id: None,
            credential_id: None,
        });
        cache.put(fingerprint, valid, Duration::from_secs(60), Duration::ZERO);
        keep(7, 10, head("/a"), &plan(), offer(60_000, &cache, None), now);
        assert!(reused(7, 10, &head("/a"), &cache, now).is_some());
        assert!(cache.invalidate(fingerprint));
        assert!(reused(7, 10, &head("/a"), &cache, now).is_none());

        keep(7, 10, head("/a"), &plan(), offer(60_000, &cache, None), now);
        cache.clear();
        assert!(reused(7, 10, &head("/a"), &cache, now).is_none());

        keep(7, 10, head("/a"), &plan(), offer(60_000, &cache, None), now);
        cache.mark_all_stale();
        assert!(reused(7, 10, &head("/a"), &cache, now).is_none());
    }

    #[test]
    fn a_decision_read_before_an_invalidation_is_never_reused() {
        // The revision is taken before the guest decides: a key invalidated meanwhile must not
        // leave its decision behind.
        let cache = cache();
        let now = Instant::now();
        let before = offer(60_000, &cache, None);
        cache.clear();
        keep(7, 10, head("/a"), &plan(), before, now);
        assert!(reused(7, 10, &head("/a"), &cache, now).is_none());
    }

    #[test]
    fn another_component_or_configuration_starts_afresh() {
        let cache = cache();
        let now = Instant::now();
        keep(7, 10, head("/a"), &plan(), offer(60_000, &cache, None), now);
        assert!(reused(8, 10, &head("/a"), &cache, now).is_none());
        // ... and the earlier pair's decisions are gone, not merely hidden.
        assert!(reused(7, 10, &head("/a"), &cache, now).is_none());
    }

    #[test]
    fn a_plan_whose_id_cannot_be_replaced_everywhere_is_never_kept() {
        let cache = cache();
        let now = Instant::now();
        let mut unplaceable = Arc::into_inner(plan()).unwrap();
        unplaceable.response.headers.request_id_at = None;
        let unplaceable = Arc::new(unplaceable);
        keep(
            7,
            10,
            head("/a"),
            &unplaceable,
            offer(60_000, &cache, None),
            now,
        );
        assert!(reused(7, 10, &head("/a"), &cache, now).is_none());
    }

    #[test]
    fn the_limits_hold_kept_decisions_and_heads_over_the_cap_are_never_kept() {
        let cache = cache();
        let now = Instant::now();
        for path in ["/1", "/2", "/3"] {
            keep(7, 2, head(path), &plan(), offer(60_000, &cache, None), now);
        }
        assert!(
            reused(7, 2, &head("/1"), &cache, now).is_none(),
            "least recent goes"
        );
        assert!(reused(7, 2, &head("/3"), &cache, now).is_some());

        keep(9, 0, head("/a"), &plan(), offer(60_000, &cache, None), now);
        assert!(
            reused(9, 0, &head("/a"), &cache, now).is_none(),
            "0 keeps none"
        );

        let mut big = head("/big");
        big.headers = format!("cookie: {}\r\n", "x".repeat(MAX_KEPT_HEAD)).into_bytes();
        keep(7, 2, big.clone(), &plan(), offer(60_000, &cache, None), now);
        assert!(reused(7, 2, &big, &cache, now).is_none());
    }
}
