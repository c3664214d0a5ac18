//! The data of one request's store: WASI context, wasi:http context and hooks, the key-cache
//! and counters views and resource limits. Nothing here outlives the request.

use crate::capabilities::counters::{CounterStores, CountersView};
use crate::capabilities::key_cache::{KeyCache, KeyCacheState, KeyCacheView, Reads};
use crate::capabilities::outgoing_http::OutgoingHttp;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub struct RequestState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outgoing: OutgoingHttp,
    key_cache: KeyCacheState,
    counters: Arc<CounterStores>,
    /// Whether the guest counted a request in a rate limit since [`Self::watch_reads`].
    counted: bool,
    pub limits: GuestLimits,
    pub busy: BusyWatch,
}

/// Stdio streams and pollables an instance may keep from one request to the next: stdin,
/// stdout and stderr with a pollable each.
const HELD_FOR_LIFE: usize = 6;

/// How a request fails when its guest grows its linear memory past `guest.memory_limit_mb`: an
/// error type of its own, so the host tells (and counts) running out of memory apart from
/// other traps.
#[derive(Debug, thiserror::Error)]
#[error("the guest tried to grow its memory to {desired} bytes, over the {limit}-byte limit")]
pub struct MemoryLimitExceeded {
    pub desired: usize,
    pub limit: usize,
}

/// `StoreLimits` (which traps on any failed growth) with the memory limit checked first, so
/// that hitting it fails with [`MemoryLimitExceeded`] rather than an anonymous message.
pub struct GuestLimits {
    memory_limit: usize,
    others: StoreLimits,
}

impl GuestLimits {
    pub fn new(memory_limit: usize, others: StoreLimits) -> Self {
        Self {
            memory_limit,
            others,
        }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                limit: self.memory_limit,
            }));
        }
        self.others.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.others.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.others.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.others.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.others.instances()
    }

    fn tables(&self) -> usize {
        self.others.tables()
    }

    fn memories(&self) -> usize {
        self.others.memories()
    }
}

/// The busy timeout's bookkeeping. The deadline fires every epoch tick the guest spends in
/// wasm; a tick counts as busy unless the guest has waited on I/O (its call returned
/// `Pending` to the task driving it) since the previous one. This bounds uninterrupted
/// computation, however many host calls it makes, and never a slow transfer. (A call hook
/// restarting the deadline on every return from the host did the same at ~3% of the CPU of
/// a request: it runs on each of the ~100 boundary crossings.)
#[derive(Default)]
pub struct BusyWatch {
    /// Set by the driver of the guest call whenever the guest waits.
    waited: Arc<AtomicBool>,
    /// Ticks in wasm since the guest last waited.
    ticks_running: u64,
}

impl BusyWatch {
    /// What the driver of a guest call sets when the guest waits.
    pub fn waited_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.waited)
    }

    /// A new request starts with a full budget.
    pub fn restart(&mut self) {
        self.ticks_running = 0;
        self.waited.store(false, Ordering::Relaxed);
    }

    /// One more tick in wasm: whether the guest has now been busy for `limit` ticks running.
    pub fn tick(&mut self, limit: u64) -> bool {
        if self.waited.swap(false, Ordering::Relaxed) {
            self.ticks_running = 0;
        } else {
            self.ticks_running += 1;
        }
        self.ticks_running >= limit
    }
}

impl RequestState {
    pub fn new(
        wasi: WasiCtx,
        outgoing: OutgoingHttp,
        key_cache: Arc<KeyCache>,
        counters: Arc<CounterStores>,
        limits: GuestLimits,
    ) -> Self {
        Self {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outgoing,
            key_cache: KeyCacheState::new(key_cache),
            counters,
            counted: false,
            limits,
            busy: BusyWatch::default(),
        }
    }

    pub fn key_cache(&mut self) -> KeyCacheView<'_> {
        self.key_cache.view()
    }

    /// Watch what the next guest call reads from the key cache, and whether it counts a
    /// request in a rate limit (see [`Reads`]).
    pub fn watch_reads(&mut self) {
        self.key_cache.watch_reads();
        self.counted = false;
    }

    /// What the call since [`Self::watch_reads`] read; a call that counted a request in a rate
    /// limit read more than fresh verdicts.
    pub fn reads(&self) -> Reads {
        let mut reads = self.key_cache.reads();
        reads.only_fresh &= !self.counted;
        reads
    }

    /// The counters, for one `counters.hit` of the guest's (the only function they have).
    pub fn counters(&mut self) -> CountersView<'_> {
        self.counted = true;
        CountersView::new(&self.counters)
    }

    /// After a request: release cache fills the guest did not settle.
    pub fn end_request(&mut self) {
        self.key_cache.release_fills();
    }

    /// Whether the instance can take another request: nothing of the last one is left in the
    /// resource table but what an instance holds for its whole life. Two kinds of entries stay
    /// legitimately:
    /// - wasmtime-wasi-http's own leak: `outgoing-handler.handle` takes ownership of the
    ///   `request-options` it is given and never deletes them; they are swept here.
    /// - the stdio streams the guest's libc opened when it first wrote a log line (and a
    ///   pollable for each), kept until the instance ends: up to [`HELD_FOR_LIFE`] streams and
    ///   pollables are accepted.
    ///
    /// Anything else left over (or more of those) retires the instance. Without the second
    /// rule, every instance that logged once (e.g. "auth API unavailable") was retired, so an
    /// outage of a dependency cost a fresh instance per request.
    pub fn is_clean(&mut self) -> bool {
        self.sweep_request_options();
        let mut held = 0;
        for entry in self.table.iter_mut() {
            let stdio_like = entry.is::<wasmtime_wasi::p2::DynOutputStream>()
                || entry.is::<wasmtime_wasi::p2::DynInputStream>()
                || entry.is::<wasmtime_wasi::p2::DynPollable>();
            if !stdio_like {
                return false;
            }
            held += 1;
        }
        held <= HELD_FOR_LIFE
    }

    /// Delete the `request-options` entries wasmtime-wasi-http left behind. The table has no
    /// iterator with handles, so they are found by probing slots until all are seen.
    fn sweep_request_options(&mut self) {
        let (mut left, mut occupied) = (0usize, 0usize);
        for entry in self.table.iter_mut() {
            occupied += 1;
            left += usize::from(entry.is::<wasmtime_wasi_http::RequestOptions>());
        }
        // Past the last occupied slot there is nothing to find: stop there.
        let mut slot = 0u32;
        while left > 0 && occupied > 0 && slot < u32::MAX {
            if let Ok(entry) = self.table.get_any_mut(slot) {
                occupied -= 1;
                if entry.is::<wasmtime_wasi_http::RequestOptions>() {
                    let options = Resource::<wasmtime_wasi_http::RequestOptions>::new_own(slot);
                    let _ = self.table.delete(options);
                    left -= 1;
                }
            }
            slot += 1;
        }
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}
