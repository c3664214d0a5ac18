//! The scenario suite on keygate's portable path: the guest's own `wasi:http` handler
//! (`[guest] entry = "wasi-http"`), as `wasmtime serve` and Spin run it.

const HOST: suite::Host = suite::Host::Portable;

#[path = "suite.rs"]
mod suite;
