//! `keygate:gateway/counters` kept in this component instance's memory, for hosts without a
//! counter store keygate can use (`wasmtime serve`; Spin until a `wasi:keyvalue` adapter
//! exists). `keygate export` plugs it into the gateway component.
//!
//! Counts live as long as the instance: under `wasmtime serve` an instance serves up to
//! `--max-instance-reuse-count` requests in a row and several instances run side by side, so
//! a limit holds per instance, not per gateway. At most [`CAPACITY`] identities are tracked.

use keygate_counters_core::{Counters, Period};
use std::cell::RefCell;
use std::collections::HashMap;

mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "../wit/adapters.wit"],
        world: "keygate:adapters/counters-memory",
        generate_all,
    });
}

use bindings::exports::keygate::gateway::counters as wit;

/// Identities tracked at most; when full, those whose windows all ended go first, then
/// the whole table (an instance is short-lived anyway).
pub const CAPACITY: usize = 10_000;

thread_local! {
    static COUNTERS: RefCell<HashMap<(String, String), Counters>> = RefCell::new(HashMap::new());
}

fn now() -> u64 {
    wasip2::clocks::wall_clock::now().seconds
}

fn period(period: wit::Period) -> Period {
    match period {
        wit::Period::Second => Period::Second,
        wit::Period::Minute => Period::Minute,
        wit::Period::Hour => Period::Hour,
        wit::Period::Day => Period::Day,
        wit::Period::Month => Period::Month,
        wit::Period::Year => Period::Year,
    }
}

struct MemoryCounters;

impl wit::Guest for MemoryCounters {
    fn hit(
        namespace: String,
        identity: String,
        windows: Vec<wit::Window>,
        count_refused: bool,
    ) -> Result<wit::Usage, wit::CounterError> {
        let now = now();
        let windows: Vec<(Period, f64)> = windows
            .iter()
            .map(|window| (period(window.period), window.limit))
            .collect();
        let mut before = Vec::with_capacity(windows.len());
        COUNTERS.with_borrow_mut(|table| {
            let key = (namespace, identity);
            if table.len() >= CAPACITY && !table.contains_key(&key) {
                table.retain(|_, counters| !counters.expired(now));
                if table.len() >= CAPACITY {
                    table.clear();
                }
            }
            table
                .entry(key)
                .or_default()
                .hit(&windows, count_refused, now, &mut before);
        });
        Ok(wit::Usage { before, now })
    }
}

bindings::export!(MemoryCounters with_types_in bindings);
