//! `stigmer`: the command line for the local platform. Commands arrive with the CLI issue.

fn main() {
    eprintln!(
        "stigmer: no commands yet; run the control plane with `cargo run -p stigmer-server` and the runner with `MODE=local cargo run -p runner`"
    );
    std::process::exit(2);
}
