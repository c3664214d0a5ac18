//! The Kong compatibility suite on the portable path (`[guest] entry = "wasi-http"`): the
//! guest's `wasi:http/incoming-handler` answers and forwards, as on other wasi:http hosts.

const ENTRY: keygate_policy::GuestEntry = keygate_policy::GuestEntry::WasiHttp;

#[path = "suite.rs"]
mod suite;
