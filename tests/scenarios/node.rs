//! The scenario suite on Node.js: the component `keygate export --for node` writes (transpiled
//! by jco, WASI from @bytecodealliance/preview2-shim), run by its `serve.sh`.

const HOST: suite::Host = suite::Host::Node;

#[path = "suite.rs"]
mod suite;
