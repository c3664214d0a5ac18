//! The data of one request's store: WASI context, wasi:http context and hooks, the key-cache
//! view and resource limits. Nothing here outlives the request.

use crate::capabilities::key_cache::{KeyCache, KeyCacheState, KeyCacheView};
use crate::capabilities::outgoing_http::OutgoingHttp;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub struct RequestState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outgoing: OutgoingHttp,
    key_cache: KeyCacheState,
    pub limits: StoreLimits,
    pub busy: BusyWatch,
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
        limits: StoreLimits,
    ) -> Self {
        Self {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outgoing,
            key_cache: KeyCacheState::new(key_cache),
            limits,
            busy: BusyWatch::default(),
        }
    }

    pub fn key_cache(&mut self) -> KeyCacheView<'_> {
        self.key_cache.view()
    }

    /// After a request: release cache fills the guest did not settle.
    pub fn end_request(&mut self) {
        self.key_cache.release_fills();
    }

    /// Whether the instance can take another request: nothing of the last one is left in the
    /// resource table. One leak is wasmtime-wasi-http's own: `outgoing-handler.handle` takes
    /// ownership of the `request-options` it is given and never deletes it, so those entries
    /// are swept here. Anything else left over retires the instance.
    pub fn is_clean(&mut self) -> bool {
        let only_leaked_options = self
            .table
            .iter_mut()
            .all(|entry| entry.is::<wasmtime_wasi_http::RequestOptions>());
        if only_leaked_options && !self.table.is_empty() {
            self.table = ResourceTable::new();
        }
        only_leaked_options
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
