//! The `keygate` binary: the CLI edge, where errors become messages and exit codes.

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
