//! Guest instances kept between requests. Instantiating is cheap with the pooling allocator,
//! but what the guest does once per instance (parse its config, compile its routes) is not:
//! reusing an instance for consecutive requests, one at a time, pays that once. A trap, a
//! leaked resource or the reuse limit retires an instance; an instance never outlives the
//! component + config it was made for (the pool belongs to that pair).

use super::component::GuestInstance;
use super::state::RequestState;
use std::sync::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;

/// A store with (once instantiated) its guest instance.
pub struct Worker {
    pub store: Store<RequestState>,
    pub instance: Option<GuestInstance>,
    pub served: u32,
    /// One of `guest.max_instances`: held for as long as the instance lives.
    _slot: OwnedSemaphorePermit,
}

impl Worker {
    pub fn new(store: Store<RequestState>, slot: OwnedSemaphorePermit) -> Self {
        Self {
            store,
            instance: None,
            served: 0,
            _slot: slot,
        }
    }
}

/// Idle workers of one component + config.
pub struct InstancePool {
    idle: Mutex<Vec<Worker>>,
    reuse_limit: u32,
}

impl InstancePool {
    pub fn new(reuse_limit: u32) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            reuse_limit,
        }
    }

    /// The most recently used idle worker (its memory is the warmest).
    pub fn take(&self) -> Option<Worker> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Return a worker after a request that completed normally.
    pub fn give_back(&self, mut worker: Worker) {
        worker.served += 1;
        let state = worker.store.data_mut();
        state.end_request();
        if worker.served >= self.reuse_limit || !state.is_clean() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(worker);
    }

    /// Retire every idle instance (their slots return to the pool allocator).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
