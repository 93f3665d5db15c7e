use crate::env;

/// A model API provider: which wire format the runner speaks, which key variable it reads and
/// which model it uses when none is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// The Anthropic Messages API.
    Anthropic,
    /// OpenAI or an OpenAI-compatible API (vLLM, LM Studio, ...).
    OpenAi,
    /// A local Ollama server (OpenAI-compatible, no key).
    Ollama,
}

impl Provider {
    /// Every provider, in the order they are listed to people.
    pub const ALL: [Provider; 3] = [Self::Anthropic, Self::OpenAi, Self::Ollama];

    /// The values `STIGMER_LLM_PROVIDER` accepts, for error messages.
    pub const ALLOWED: &'static str = "anthropic, openai, ollama";

    /// Reads a `STIGMER_LLM_PROVIDER` value: case and surrounding space do not matter.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(raw))
    }

    /// The value of `STIGMER_LLM_PROVIDER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAi => "openai",
            Self::Ollama => "ollama",
        }
    }

    /// The name people know it by, for prompts and banners.
    pub fn label(self) -> &'static str {
        match self {
            Self::Anthropic => "Anthropic",
            Self::OpenAi => "OpenAI",
            Self::Ollama => "Ollama",
        }
    }

    /// The provider's own key variable, read after [`env::LLM_API_KEY`]; `None` when it needs
    /// no key.
    pub fn key_variable(self) -> Option<&'static str> {
        match self {
            Self::Anthropic => Some(env::ANTHROPIC_API_KEY),
            Self::OpenAi => Some(env::OPENAI_API_KEY),
            Self::Ollama => None,
        }
    }

    /// The model used when neither the execution, the agent nor `STIGMER_LLM_MODEL` names one.
    pub fn default_model(self) -> &'static str {
        match self {
            Self::Anthropic => "claude-sonnet-4-5",
            Self::OpenAi => "gpt-4o-mini",
            Self::Ollama => "qwen2.5-coder:7b",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_ignores_case_and_space() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
            assert!(Provider::ALLOWED.contains(p.as_str()));
        }
        assert_eq!(Provider::parse(" OpenAI "), Some(Provider::OpenAi));
        assert_eq!(Provider::parse("gemini"), None);
    }

    #[test]
    fn only_ollama_needs_no_key() {
        assert_eq!(
            Provider::Anthropic.key_variable(),
            Some(env::ANTHROPIC_API_KEY)
        );
        assert_eq!(Provider::OpenAi.key_variable(), Some(env::OPENAI_API_KEY));
        assert_eq!(Provider::Ollama.key_variable(), None);
    }
}
