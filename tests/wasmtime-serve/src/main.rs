//! `wasmtime serve` for the tests: the `serve` subcommand of wasmtime-cli 48.0.8's binary
//! (`src/bin/wasmtime.rs`), run by its own library code, so `serve.sh` from `keygate export`
//! executes exactly what `cargo install wasmtime-cli --version 48.0.8` would.

use clap::Parser;
use std::process::ExitCode;

/// The subset of the `wasmtime` command line that the exported `serve.sh` uses.
#[derive(Parser)]
#[command(name = "wasmtime", version = env!("CARGO_PKG_VERSION"))]
enum Wasmtime {
    /// Serves requests from a wasi-http proxy component.
    Serve(wasmtime_cli::commands::ServeCommand),
}

fn main() -> ExitCode {
    let Wasmtime::Serve(command) = Wasmtime::parse();
    match command.execute() {
        Ok(()) => ExitCode::SUCCESS,
        // As wasmtime's own `main` reports an error returned from a command.
        Err(err) => {
            eprintln!("Error: {err:?}");
            ExitCode::FAILURE
        }
    }
}
