//! Generated bindings for the `keygate:gateway/gateway` world. WASI types come from the
//! `wasip2` crate so the guest and its helpers share one set of resource types.

wit_bindgen::generate!({
    path: "../wit",
    world: "keygate:gateway/gateway",
    with: {
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
        "wasi:random/random@0.2.12": wasip2::random::random,
        "wasi:cli/stdout@0.2.12": wasip2::cli::stdout,
        "wasi:cli/stderr@0.2.12": wasip2::cli::stderr,
        "wasi:cli/stdin@0.2.12": wasip2::cli::stdin,
        "keygate:gateway/key-cache@0.1.4": generate,
        "keygate:gateway/counters@0.1.4": generate,
    },
    pub_export_macro: true,
});
