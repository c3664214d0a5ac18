//! The scenario suite on keygate's fast path: the guest decides from the head
//! (`keygate:gateway/policy`), the host forwards natively.

const HOST: suite::Host = suite::Host::FastPath;

#[path = "suite.rs"]
mod suite;
