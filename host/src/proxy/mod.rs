//! The fast path's native half: the host applies the guest's decision. The head is lowered
//! once for `decide` (`head`), every decision is checked against the active configuration
//! before anything leaves the gateway (`plan`), and a forward is sent over this thread's
//! pooled connections with bodies streamed host-side, never through wasm (`forward`).

pub mod balancer;
mod field_block;
pub mod forward;
pub mod head;
mod origin_pool;
pub mod plan;
pub mod reply;

pub use forward::Upstream;
