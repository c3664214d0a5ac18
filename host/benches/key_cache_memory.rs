//! How much memory a full key cache takes: fills `keygate`'s key cache with N verdicts (default
//! 1 000 000, like an auth API's whole customer base) and reports the resident-set growth.
//!
//!     cargo bench -p keygate --bench key_cache_memory [-- N]

use keygate::capabilities::key_cache::{Consumer, KeyCache, Verdict, parse_fingerprint};
use keygate::metrics::Metrics;
use keygate_policy::fingerprint::fingerprint;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kib();
    let cache = KeyCache::new(n, Duration::from_secs(2), Arc::new(Metrics::default()));
    let started = Instant::now();
    for i in 0..n {
        // A realistic mix: most keys valid with a consumer, one in ten invalid.
        let verdict = if i % 10 == 0 {
            Verdict::Invalid
        } else {
            Verdict::Valid(Consumer {
                id: Some(format!("c{i:08}")),
                username: Some(format!("customer-{i}")),
                custom_id: None,
                credential_id: Some(format!("cred-{i:08}")),
            })
        };
        let fp = parse_fingerprint(&fingerprint(&format!("api-key-{i}")));
        cache.put(
            fp,
            verdict,
            Duration::from_secs(300),
            Duration::from_secs(3600),
        );
    }
    let fill = started.elapsed();
    let after = rss_kib();
    let grown_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "key cache: {} entries, RSS {:.1} MiB -> {:.1} MiB (+{grown_mib:.1} MiB, {:.0} bytes/entry), filled in {fill:?}",
        cache.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        grown_mib * 1024.0 * 1024.0 / n as f64,
    );
}
