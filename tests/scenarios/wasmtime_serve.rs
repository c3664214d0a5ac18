//! The scenario suite on `wasmtime serve` 48.0.8: the component `keygate export --for
//! wasmtime` writes (the key cache plugged in as an adapter), run by its `serve.sh`.

const HOST: suite::Host = suite::Host::WasmtimeServe;

#[path = "suite.rs"]
mod suite;
