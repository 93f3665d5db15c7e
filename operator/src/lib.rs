//! The AgentRunner operator. Built by the operator issue.
