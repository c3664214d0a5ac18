//! What the host lends the guest beyond plain WASI: the shared key cache, rate-limit counters
//! and pooled outgoing HTTP. Each capability holds its shared state and hands every request a
//! view of it.

pub mod allow_list;
pub mod breaker;
pub mod counters;
pub mod key_cache;
pub mod outgoing_http;
pub mod redis_counters;
