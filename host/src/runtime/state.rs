//! The data of one request's store: WASI context, wasi:http context and hooks, the key-cache
//! view and resource limits. Nothing here outlives the request.

use crate::capabilities::key_cache::{KeyCache, KeyCacheState, KeyCacheView};
use crate::capabilities::outgoing_http::OutgoingHttp;
use std::sync::Arc;
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
