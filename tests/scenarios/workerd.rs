//! The scenario suite on workerd (Cloudflare's Workers runtime, from npm): the Worker
//! `keygate export --for workerd` writes (the component transpiled by jco with JSPI), run by
//! its `serve.sh`.

const HOST: suite::Host = suite::Host::Workerd;

#[path = "suite.rs"]
mod suite;
