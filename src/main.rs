//! The `postern` binary: everything happens in `postern::cli`.

fn main() -> std::process::ExitCode {
    postern::cli::main()
}
