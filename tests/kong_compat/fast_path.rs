//! The Kong compatibility suite on keygate's fast path: the guest decides from the head
//! (`keygate:gateway/policy`), the host forwards natively.

const ENTRY: keygate_policy::GuestEntry = keygate_policy::GuestEntry::Auto;

#[path = "suite.rs"]
mod suite;
