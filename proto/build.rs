//! Compiles the contract with protox (pure Rust) so that no system `protoc` is needed.

const PROTOS: &[&str] = &[
    "stigmer/agent/v1/agent.proto",
    "stigmer/agentexecution/v1/agentexecution.proto",
    "stigmer/runner/v1/runner.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
