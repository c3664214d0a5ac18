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
use crate::proxy::head::HeadView;
use crate::proxy::plan::{Forwarding, ValidPlan};
use lru::LruCache;
use std::cell::RefCell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
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

/// One component + configuration pair's decisions, as a thread keeps them: by a hash of the
/// head, each with the whole head it was made for. Heads that share a hash share a place (the
/// later one takes it): a lookup compares the whole head.
struct Kept {
    generation: u64,
    decisions: LruCache<u64, KeptDecision>,
    /// Randomly seeded per thread and pair: which heads share a place cannot be chosen.
    hasher: foldhash::fast::RandomState,
}

struct KeptDecision {
    head: RequestHead,
    /// The address `head.client_ip` was written from.
    client: IpAddr,
    plan: Arc<ValidPlan>,
    /// The guest's offer, or the first key verdict read going stale, whichever comes first.
    until: Instant,
    /// The key cache's revision when the guest decided.
    key_cache_revision: u64,
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

impl Kept {
    /// The place of a head: a hash of everything the guest reads of it.
    fn place(&self, head: &HeadView<'_>) -> Place {
        let mut hasher = self.hasher.build_hasher();
        (
            head.method,
            head.scheme,
            head.authority,
            head.path_with_query,
        )
            .hash(&mut hasher);
        (head.client, head.local_port).hash(&mut hasher);
        for (name, value) in head.headers {
            hasher.write(name.as_str().as_bytes());
            hasher.write(value.as_bytes());
        }
        Place(hasher.finish())
    }
}

/// Where a decision for a head is kept, if the guest offers it (see [`reused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place(u64);

/// What a thread has for a request: a plan to forward it on, or where a decision made for it
/// would be kept.
pub enum Lookup {
    Reused(Forwarding),
    Decide(Place),
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
                hasher: foldhash::fast::RandomState::default(),
            }),
        };
        f(kept)
    })
}

/// The plan kept for `head`, under a request id of its own; else where the guest's decision
/// for it would be kept. A decision that has lapsed is dropped.
pub fn reused(
    generation: u64,
    capacity: u32,
    head: &HeadView<'_>,
    key_cache: &KeyCache,
    now: Instant,
) -> Lookup {
    let Some(capacity) = NonZeroUsize::new(capacity as usize) else {
        return Lookup::Decide(Place(0));
    };
    with_kept(generation, capacity, |kept| {
        let place = kept.place(head);
        let Some(decision) = kept.decisions.get(&place.0) else {
            return Lookup::Decide(place);
        };
        if !head.is(&decision.head, decision.client) {
            return Lookup::Decide(place);
        }
        if now >= decision.until || decision.key_cache_revision != key_cache.revision() {
            kept.decisions.pop(&place.0);
            return Lookup::Decide(place);
        }
        match Forwarding::again(&decision.plan) {
            Some(forwarding) => Lookup::Reused(forwarding),
            None => Lookup::Decide(place),
        }
    })
}

/// Keep `plan`, decided for `head` (lowered from a request of `client`), at `place` for reuse
/// as the guest offered and within the freshness of the key verdicts its call read.
pub fn keep(
    generation: u64,
    capacity: u32,
    place: Place,
    (head, client): (RequestHead, IpAddr),
    plan: &Arc<ValidPlan>,
    (reuse, reads): (Reuse, Reads),
    now: Instant,
) {
    let Some(capacity) = NonZeroUsize::new(capacity as usize) else {
        return;
    };
    if head_size(&head) > MAX_KEPT_HEAD || !plan.can_take_another_id() {
        return;
    }
    let offered = now + Duration::from_millis(u64::from(reuse.for_ms));
    let until = reads
        .fresh_until
        .map_or(offered, |fresh| fresh.min(offered));
    if until <= now {
        return;
    }
    with_kept(generation, capacity, |kept| {
        let decision = KeptDecision {
            head,
            client,
            plan: Arc::clone(plan),
            until,
            key_cache_revision: reads.revision,
        };
        kept.decisions.put(place.0, decision);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::key_cache::{Consumer, Verdict};
    use crate::proxy::plan::{RecordedLabels, ValidEdits, ValidResponseEdits};
    use crate::runtime::component::policy_api::Labels;
    use http::{HeaderName, HeaderValue};
    use std::sync::Arc;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    const CLIENT: &str = "10.0.0.1:5000";

    fn request(path: &str) -> http::Request<()> {
        http::Request::get(path)
            .header("host", "gw.test")
            .header("apikey", "k1")
            .header("accept", "*/*")
            .body(())
            .unwrap()
    }

    fn view_from<'a>(request: &'a http::Request<()>, client: &str, port: u16) -> HeadView<'a> {
        let Ok(view) = crate::proxy::head::view(request, client.parse().unwrap(), port) else {
            panic!("the test request has a Host")
        };
        view
    }

    fn view(request: &http::Request<()>) -> HeadView<'_> {
        view_from(request, CLIENT, 8000)
    }

    /// Keep `plan` for `request`, as the gateway does after asking the guest.
    fn keep_for(
        generation: u64,
        capacity: u32,
        request: &http::Request<()>,
        plan: &Arc<ValidPlan>,
        offer: (Reuse, Reads),
        now: Instant,
    ) {
        let view = view(request);
        let Lookup::Decide(place) = reused(generation, capacity, &view, &cache(), now) else {
            panic!("nothing is kept for it yet");
        };
        let lowered = (view.lower(), view.client);
        keep(generation, capacity, place, lowered, plan, offer, now);
    }

    /// Keep the usual plan for `GET /a` (generation 7, room for 10), offered for 60 s.
    fn keep_a(cache: &KeyCache, now: Instant) {
        let offer = offer(60_000, cache, None);
        keep_for(7, 10, &request("/a"), &plan(), offer, now);
    }

    /// Whether `GET /a` (generation 7) is forwarded on a kept plan.
    fn reused_a(cache: &KeyCache, now: Instant) -> bool {
        found(7, 10, &view(&request("/a")), cache, now).is_some()
    }

    /// The plan kept for `head`, if any.
    fn found(
        generation: u64,
        capacity: u32,
        head: &HeadView<'_>,
        cache: &KeyCache,
        now: Instant,
    ) -> Option<Forwarding> {
        match reused(generation, capacity, head, cache, now) {
            Lookup::Reused(forwarding) => Some(forwarding),
            Lookup::Decide(_) => None,
        }
    }

    fn plan() -> Arc<ValidPlan> {
        let labels = Labels {
            route: Some("r".into()),
            service: Some("api".into()),
            consumer: None,
            key_lookup: Some("fresh".into()),
            auth_call_ms: None,
            rate_limit: None,
        };
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
            labels: labels.clone(),
            recorded: RecordedLabels::of(&labels),
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
        keep_a(&cache, now);
        let reused = found(7, 10, &view(&request("/a")), &cache, now).expect("kept");
        let id = reused.request_id.clone();
        assert_ne!(*id, *ID);
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
        assert_ne!(*again, *id, "each reuse gets its own id");
    }

    fn reused_plan_id(cache: &KeyCache, now: Instant) -> String {
        found(7, 10, &view(&request("/a")), cache, now)
            .unwrap()
            .request_id
            .to_string()
    }

    #[test]
    fn a_head_that_differs_anywhere_is_decided_afresh() {
        let cache = cache();
        let now = Instant::now();
        keep_a(&cache, now);
        let same = request("/a");
        let mut other_key = request("/a");
        other_key
            .headers_mut()
            .insert("apikey", HeaderValue::from_static("k2"));
        let mut one_more_header = request("/a");
        one_more_header
            .headers_mut()
            .insert("x-more", HeaderValue::from_static("1"));
        let mut other_method = request("/a");
        *other_method.method_mut() = http::Method::POST;
        let mut other_host = request("/a");
        other_host
            .headers_mut()
            .insert("host", HeaderValue::from_static("gw2.test"));
        let other_path = request("/b");
        for (why, other) in [
            ("another key", view(&other_key)),
            ("another header", view(&one_more_header)),
            ("another method", view(&other_method)),
            ("another host", view(&other_host)),
            ("another path", view(&other_path)),
            ("another client", view_from(&same, "10.0.0.2:5000", 8000)),
            ("another port", view_from(&same, CLIENT, 8443)),
        ] {
            assert!(found(7, 10, &other, &cache, now).is_none(), "{why}");
        }
        assert!(reused_a(&cache, now));
    }

    #[test]
    fn heads_that_differ_only_in_a_header_are_kept_side_by_side() {
        // The usual case: one path, a key per client.
        let cache = cache();
        let now = Instant::now();
        let keyed = |key: &'static str| {
            let mut request = request("/a");
            request
                .headers_mut()
                .insert("apikey", HeaderValue::from_static(key));
            request
        };
        let keys = ["k1", "k2", "k3"];
        for key in keys {
            keep_for(
                7,
                10,
                &keyed(key),
                &plan(),
                offer(60_000, &cache, None),
                now,
            );
        }
        for key in keys {
            assert!(
                found(7, 10, &view(&keyed(key)), &cache, now).is_some(),
                "{key}"
            );
        }
    }

    #[test]
    fn reuse_ends_with_the_offer_or_the_first_verdict_going_stale() {
        let cache = cache();
        let now = Instant::now();
        keep_for(
            7,
            10,
            &request("/a"),
            &plan(),
            offer(1_000, &cache, None),
            now,
        );
        let soon = now + Duration::from_millis(999);
        assert!(found(7, 10, &view(&request("/a")), &cache, soon).is_some());
        assert!(
            found(
                7,
                10,
                &view(&request("/a")),
                &cache,
                now + Duration::from_secs(1)
            )
            .is_none()
        );

        let stale_at = now + Duration::from_millis(200);
        keep_for(
            7,
            10,
            &request("/b"),
            &plan(),
            offer(60_000, &cache, Some(stale_at)),
            now,
        );
        assert!(found(7, 10, &view(&request("/b")), &cache, now).is_some());
        assert!(found(7, 10, &view(&request("/b")), &cache, stale_at).is_none());
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
        keep_a(&cache, now);
        assert!(reused_a(&cache, now));
        assert!(cache.invalidate(fingerprint));
        assert!(!reused_a(&cache, now));

        keep_a(&cache, now);
        cache.clear();
        assert!(!reused_a(&cache, now));

        keep_a(&cache, now);
        cache.mark_all_stale();
        assert!(!reused_a(&cache, now));
    }

    #[test]
    fn a_decision_read_before_an_invalidation_is_never_reused() {
        // The revision is taken before the guest decides: a key invalidated meanwhile must not
        // leave its decision behind.
        let cache = cache();
        let now = Instant::now();
        let before = offer(60_000, &cache, None);
        cache.clear();
        keep_for(7, 10, &request("/a"), &plan(), before, now);
        assert!(!reused_a(&cache, now));
    }

    #[test]
    fn another_component_or_configuration_starts_afresh() {
        let cache = cache();
        let now = Instant::now();
        keep_a(&cache, now);
        assert!(found(8, 10, &view(&request("/a")), &cache, now).is_none());
        // ... and the earlier pair's decisions are gone, not merely hidden.
        assert!(!reused_a(&cache, now));
    }

    #[test]
    fn a_plan_whose_id_cannot_be_replaced_everywhere_is_never_kept() {
        let cache = cache();
        let now = Instant::now();
        let mut unplaceable = Arc::into_inner(plan()).unwrap();
        unplaceable.response.headers.request_id_at = None;
        let unplaceable = Arc::new(unplaceable);
        keep_for(
            7,
            10,
            &request("/a"),
            &unplaceable,
            offer(60_000, &cache, None),
            now,
        );
        assert!(!reused_a(&cache, now));
    }

    #[test]
    fn the_limits_hold_kept_decisions_and_heads_over_the_cap_are_never_kept() {
        let cache = cache();
        let now = Instant::now();
        for path in ["/1", "/2", "/3"] {
            keep_for(
                7,
                2,
                &request(path),
                &plan(),
                offer(60_000, &cache, None),
                now,
            );
        }
        assert!(
            found(7, 2, &view(&request("/1")), &cache, now).is_none(),
            "least recent goes"
        );
        assert!(found(7, 2, &view(&request("/3")), &cache, now).is_some());

        keep_for(
            9,
            0,
            &request("/a"),
            &plan(),
            offer(60_000, &cache, None),
            now,
        );
        assert!(
            found(9, 0, &view(&request("/a")), &cache, now).is_none(),
            "0 keeps none"
        );

        let mut big = request("/big");
        let cookie = "x".repeat(MAX_KEPT_HEAD);
        big.headers_mut()
            .insert("cookie", HeaderValue::from_str(&cookie).unwrap());
        keep_for(7, 2, &big, &plan(), offer(60_000, &cache, None), now);
        assert!(found(7, 2, &view(&big), &cache, now).is_none());
    }
}
