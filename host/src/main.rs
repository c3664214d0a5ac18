//! The `keygate` binary: the CLI edge, where errors become messages and exit codes.

fn main() -> std::process::ExitCode {
    keygate::allocator::no_transparent_huge_pages();
    keygate::cli::main()
}
