#!/bin/sh
# RUSTC_WRAPPER for `cargo +nightly fuzz` on a machine whose nightly lacks the wasm32-wasip2
# standard library: the `plan` target links the `keygate` host, whose build script runs a
# nested cargo that builds the guest component for wasm32-wasip2 with the same rustc. This
# sends that nested build (its rustc calls inherit the build script's CARGO_CFG_* variables)
# to the pinned toolchain of rust-toolchain.toml, which has the target; everything else, the
# fuzzed code included, goes to the rustc cargo chose.
#   RUSTC_WRAPPER=$PWD/rustc-wrapper.sh cargo +nightly fuzz run <target>
rustc="$1"
shift
if [ -n "$CARGO_CFG_TARGET_ARCH" ]; then
    pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
    exec rustup run "$pinned" rustc "$@"
fi
exec "$rustc" "$@"
