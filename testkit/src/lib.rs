//! Test helpers with real parts on loopback: the control plane, child processes, and a scripted
//! LLM server that speaks the Anthropic and OpenAI wire formats (a stand-in for the real APIs,
//! which CI cannot reach), a Daytona contract server (a stand-in for Daytona, likewise), and a
//! runner-API proxy that holds a chosen call so a test can kill a runner at an exact point.

pub mod control_plane;
pub mod daytona;
pub mod llm;
pub mod numbers;
pub mod pki;
pub mod process;
pub mod redis;
pub mod runner_proxy;
