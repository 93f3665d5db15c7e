//! What every execution task shares: built once by the worker at start, read by the executions.

use std::sync::Arc;

use crate::client::ControlPlane;
use crate::config::Config;
use crate::dispatch::Dispatch;
use crate::http::Health;
use crate::live::LiveText;
use crate::llm::LlmClient;
use crate::sandboxes::Sandboxes;
use crate::tools::ToolLimits;

pub struct WorkerCtx {
    pub config: Config,
    pub client: ControlPlane,
    pub llm: LlmClient,
    /// Long-poll claim or the Redis queue, per mode.
    pub dispatch: Dispatch,
    /// The filesystem root or the Daytona pool, per mode.
    pub sandboxes: Sandboxes,
    pub tool_limits: ToolLimits,
    pub health: Arc<Health>,
    /// Model text on its way to live subscribers.
    pub live: LiveText,
}
