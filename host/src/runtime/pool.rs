//! Guest instances kept between requests. Instantiating is cheap with the pooling allocator,
//! but what the guest does once per instance (parse its config, compile its routes) is not:
//! reusing an instance for consecutive requests, one at a time, pays that once. A trap, a
//! leaked resource or the reuse limit retires an instance; an instance never outlives the
//! component + config it was made for (the pool belongs to that pair).

use super::component::GuestInstance;
use super::state::RequestState;
use std::sync::{Arc, Mutex};
use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore};
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

/// What a request runs on: an instance that served before, or a slot to make one in.
pub enum Claim {
    Idle(Worker),
    Slot(OwnedSemaphorePermit),
}

/// Idle workers of one component + config.
pub struct InstancePool {
    idle: Mutex<Vec<Worker>>,
    /// An idle worker keeps its slot, so a request waiting for a free slot would never see it:
    /// it is woken here as well.
    given_back: Notify,
    reuse_limit: u32,
}

impl InstancePool {
    pub fn new(reuse_limit: u32) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            given_back: Notify::new(),
            reuse_limit,
        }
    }

    /// The most recently used idle worker (its memory is the warmest).
    fn take(&self) -> Option<Worker> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// An idle worker, else one of `slots` (`guest.max_instances`) for a new instance; while
    /// there is neither, whichever comes first.
    pub async fn claim(&self, slots: &Arc<Semaphore>) -> Result<Claim, AcquireError> {
        if let Some(worker) = self.take() {
            return Ok(Claim::Idle(worker));
        }
        loop {
            let given_back = self.given_back.notified();
            let mut given_back = std::pin::pin!(given_back);
            // Listening before looking: a worker given back in between still wakes this (or
            // another) waiter, even when several come back at once.
            given_back.as_mut().enable();
            if let Some(worker) = self.take() {
                return Ok(Claim::Idle(worker));
            }
            tokio::select! {
                slot = Arc::clone(slots).acquire_owned() => return slot.map(Claim::Slot),
                () = given_back => {}
            }
        }
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
        self.given_back.notify_one();
    }

    /// Retire every idle instance (their slots return to the pool allocator).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
