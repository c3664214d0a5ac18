//! The wasmtime engine and linker, configured once for the process.

use super::state::RequestState;
use crate::capabilities::{counters, key_cache};
use anyhow::Context;
use keygate_policy::Guest as GuestLimits;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; the busy timeout is counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Freed instance slots kept warm (ready for the same component, no pages kept resident).
const WARM_SLOTS: u32 = 16;

/// A pooling-allocator engine sized for `limits.max_instances` concurrent guest instances.
pub fn build_engine(limits: &GuestLimits) -> anyhow::Result<Engine> {
    let instances = limits.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(usize::try_from(limits.memory_limit_mb).unwrap_or(usize::MAX) << 20)
        // A freed slot keeps none of its pages: an instance serves `instance_reuse` requests
        // (1 000 by default), so the page faults of a fresh one's first touches are a fraction
        // of a microsecond per request, while every 1 MiB a warm slot kept resident added up to
        // the RSS creeping by a MiB each time the soak's load spread over one more slot (its
        // first minutes: +16 % for 16 warm slots).
        .linear_memory_keep_resident(0)
        .table_keep_resident(0)
        // Warm slots are still worth keeping: a slot that last held the same component maps
        // its memory image again without work.
        .max_unused_warm_slots(WARM_SLOTS);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `KEYGATE_PERFMAP=1`: name guest functions for `perf` (writes /tmp/perf-PID.map). Guest
    // code compiled in memory is otherwise anonymous in a profile.
    if std::env::var_os("KEYGATE_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine (pooling allocator)")
}

/// Everything a request's store may use: WASI (the guest is a Rust std component, so it needs
/// wasi:cli too), wasi:http, the key cache and the counters.
pub fn build_linker(engine: &Engine) -> anyhow::Result<Linker<RequestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking wasi:http")?;
    key_cache::add_to_linker(&mut linker, RequestState::key_cache)
        .map_err(anyhow::Error::from)
        .context("linking key-cache")?;
    counters::add_to_linker(&mut linker, RequestState::counters)
        .map_err(anyhow::Error::from)
        .context("linking counters")?;
    Ok(linker)
}

/// Advances the epoch for as long as the engine lives; stops with the last engine handle.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = Arc::new(engine.weak());
    std::thread::Builder::new()
        .name("keygate-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}
