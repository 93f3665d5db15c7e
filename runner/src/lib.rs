//! The Stigmer agent runner.

pub mod conversation;
pub mod llm;
pub mod sandbox;
pub mod tools;
