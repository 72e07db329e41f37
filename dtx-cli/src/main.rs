//! `dtx`: the operator's tool for a dtx database. See the `dtx_cli` library for the same
//! commands linked into a service's own binary.

fn main() -> std::process::ExitCode {
    dtx_cli::run()
}
