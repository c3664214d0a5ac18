//! The key cache on its own: freshness, eviction, single-flight fills, packed verdicts, the
//! fingerprints a guest may send, and what a call's reads say about reuse.
use super::*;

fn cache() -> Arc<KeyCache> {
    Arc::new(KeyCache::new(
        2,
        Duration::from_secs(5),
        Arc::new(Metrics::default()),
    ))
}

fn valid(name: &str) -> Verdict {
    Verdict::Valid(Consumer {
        id: None,
        username: Some(name.into()),
        custom_id: None,
        credential_id: None,
    })
}

#[tokio::test]
async fn a_calls_reads_say_whether_its_decision_may_be_reused_and_until_when() {
    let cache = cache();
    let fresh = [1u8; 32];
    let text = |fp: [u8; 32]| crate::http_util::hex(&fp);
    cache.put(fresh, valid("a"), Duration::from_secs(60), Duration::ZERO);
    let mut state = KeyCacheState::new(Arc::clone(&cache));
    state.watch_reads();
    let before = Instant::now();
    assert!(matches!(
        state.view().get(text(fresh)).await,
        Lookup::Fresh(_)
    ));
    let reads = state.reads();
    assert!(reads.only_fresh);
    assert_eq!(reads.revision, cache.revision());
    let until = reads.fresh_until.expect("a fresh verdict was read");
    assert!(
        until > before + Duration::from_secs(59)
            && until <= Instant::now() + Duration::from_secs(60)
    );

    // A miss makes this call the filler: its decision is its own.
    assert!(matches!(
        state.view().get(text([2u8; 32])).await,
        Lookup::Miss
    ));
    assert!(!state.reads().only_fresh);
    state.watch_reads();
    assert!(state.reads().only_fresh && state.reads().fresh_until.is_none());
    state.view().put(text([2u8; 32]), Verdict::Invalid, 1000, 0);
    assert!(!state.reads().only_fresh);
    state.watch_reads();
    state.view().invalidate(text([3u8; 32]));
    assert!(!state.reads().only_fresh);
}

#[tokio::test]
async fn the_revision_moves_when_a_fresh_verdict_may_have_changed_and_not_when_one_is_added() {
    let cache = cache();
    let start = cache.revision();
    cache.put(
        [1u8; 32],
        valid("a"),
        Duration::from_secs(60),
        Duration::ZERO,
    );
    assert_eq!(cache.revision(), start, "a new key changes no verdict");
    cache.put(
        [1u8; 32],
        Verdict::Invalid,
        Duration::from_secs(60),
        Duration::ZERO,
    );
    assert_ne!(cache.revision(), start, "a fresh verdict replaced");
    let replaced = cache.revision();
    // Evicted or never cached: a decision kept for reuse may still rest on its verdict.
    assert!(!cache.invalidate([9u8; 32]));
    assert_ne!(cache.revision(), replaced, "a revocation of a key not held");
    let revoked = cache.revision();
    assert!(cache.invalidate([1u8; 32]));
    assert_ne!(cache.revision(), revoked);
    let invalidated = cache.revision();
    cache.mark_all_stale();
    assert_ne!(cache.revision(), invalidated);
    let stale = cache.revision();
    cache.clear();
    assert_ne!(cache.revision(), stale);
}

#[tokio::test]
async fn fresh_then_stale_then_gone() {
    let cache = cache();
    let fp = [1u8; 32];
    assert!(matches!(cache.get(fp).await, Lookup::Miss));
    cache.put(
        fp,
        valid("a"),
        Duration::from_millis(0),
        Duration::from_secs(60),
    );
    assert!(matches!(cache.get(fp).await, Lookup::Stale(_)));
    cache.put(fp, valid("a"), Duration::from_secs(60), Duration::ZERO);
    assert!(matches!(cache.get(fp).await, Lookup::Fresh(_)));
    assert!(cache.invalidate(fp));
    assert!(matches!(cache.get(fp).await, Lookup::Miss));
}

#[tokio::test]
async fn capacity_evicts_least_recently_used() {
    let cache = cache();
    for i in 0..3u8 {
        cache.put(
            [i; 32],
            Verdict::Invalid,
            Duration::from_secs(60),
            Duration::ZERO,
        );
    }
    assert_eq!(cache.len(), 2);
    assert!(matches!(cache.get([0; 32]).await, Lookup::Miss));
}

#[tokio::test]
async fn concurrent_misses_wait_for_one_filler() {
    let cache = cache();
    let fp = [7u8; 32];
    assert!(
        matches!(cache.get(fp).await, Lookup::Miss),
        "first caller fills"
    );
    let waiter = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move { cache.get(fp).await }
    });
    tokio::task::yield_now().await;
    cache.put(fp, valid("filled"), Duration::from_secs(60), Duration::ZERO);
    assert!(matches!(
        waiter.await.unwrap(),
        Lookup::Fresh(Verdict::Valid(_))
    ));
}

#[tokio::test]
async fn a_dropped_filler_releases_its_waiters() {
    let cache = cache();
    let fp = [9u8; 32];
    {
        let mut state = KeyCacheState::new(Arc::clone(&cache));
        let lookup = Host::get(&mut state.view(), "09".repeat(32)).await;
        assert!(matches!(lookup, Lookup::Miss));
    }
    // The filler's request ended without put/release: the next caller fills at once.
    let next = tokio::time::timeout(Duration::from_secs(1), cache.get(fp)).await;
    assert!(matches!(next, Ok(Lookup::Miss)));
}

#[test]
fn packed_verdicts_unpack_to_what_was_stored() {
    let consumer = Consumer {
        id: Some("id-1".into()),
        username: None,
        custom_id: Some(String::new()),
        credential_id: Some("cred é".into()),
    };
    let packed = PackedVerdict::pack(Verdict::Valid(consumer));
    let mut encoded = Vec::new();
    cache_core::encode_consumer(
        &cache_core::Consumer {
            id: Some("id-1".into()),
            username: None,
            custom_id: Some(String::new()),
            credential_id: Some("cred é".into()),
        },
        &mut encoded,
    );
    assert_eq!(
        packed.0.as_deref(),
        Some(&encoded[..]),
        "kept as the key-value adapter stores it"
    );
    match packed.unpack() {
        Some(Verdict::Valid(c)) => {
            assert_eq!(c.id.as_deref(), Some("id-1"));
            assert_eq!(c.username, None);
            assert_eq!(c.custom_id.as_deref(), Some(""));
            assert_eq!(c.credential_id.as_deref(), Some("cred é"));
        }
        other => panic!("valid verdict came back as {other:?}"),
    }
    let invalid = PackedVerdict::pack(Verdict::Invalid);
    assert!(invalid.0.is_none(), "an invalid verdict allocates nothing");
    assert!(matches!(invalid.unpack(), Some(Verdict::Invalid)));
    assert!(
        PackedVerdict(Some(Box::new([1, 9, 0, 0, 0])))
            .unpack()
            .is_none(),
        "damaged bytes are no verdict"
    );
}

/// Digests below are from `printf %s … | sha256sum`, not from the code under test.
fn hex(digest: &str) -> Fingerprint {
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn fingerprints_parse_from_hex_or_are_hashed() {
    let ascending = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef].repeat(4);
    assert_eq!(
        parse_fingerprint(&"0123456789abcdef".repeat(4))[..],
        ascending,
        "64 hex characters are the fingerprint itself, high nibble first"
    );
    assert_eq!(
        parse_fingerprint(&"0123456789ABCDEF".repeat(4))[..],
        ascending,
        "upper-case hex is the same fingerprint"
    );
    for (text, sha256) in [
        (
            "abc".to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            String::new(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            "g".repeat(64),
            "4e52b0a8d918b923a15f50e49b43cd4f99cf19eb581bd84dcc2f0b288e55da04",
        ),
        (
            "a".repeat(63),
            "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34",
        ),
        (
            "a".repeat(65),
            "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0",
        ),
        (
            "0123456789abcdef".repeat(4) + "\n",
            "694ff60b8fa08c3df3bc8acf79dd84ea9da54b66cf1597d9ecc4bd6d02d446c8",
        ),
    ] {
        assert_eq!(
            parse_fingerprint(&text),
            hex(sha256),
            "{text:?} is not 64 hex characters: it is hashed"
        );
    }
}
