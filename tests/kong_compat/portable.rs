//! The Kong compatibility suite on the portable path (`[guest] entry = "wasi-http"`): the
//! guest's `wasi:http/incoming-handler` answers and forwards, as on other wasi:http hosts.

const HOST: suite::Host = suite::Host::Portable;

#[path = "suite.rs"]
mod suite;
