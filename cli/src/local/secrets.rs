//! The LLM key the runner needs: which variable, found in the environment or asked for.
//!
//! The provider (`STIGMER_LLM_PROVIDER`, default ollama as in the runner) decides the key:
//! Anthropic reads `ANTHROPIC_API_KEY`, OpenAI `OPENAI_API_KEY`, both accept
//! `STIGMER_LLM_API_KEY` first; Ollama needs none. A missing key is asked for with hidden
//! input on a terminal, and is an error naming the variable anywhere else. The value lives in
//! a [`Secret`], whose `Debug` and `Display` never show it; it only ever leaves this process
//! through a child's environment.

use std::io::IsTerminal as _;

use super::LocalError;

// The provider, its key variable and the redacting `Secret` are the runner's contract: one
// definition shared with the runner and the operator.
use stigmer_contract::env as vars;
pub use stigmer_contract::{Provider, Secret};

/// The generic key variable, read before the provider's own.
pub const GENERIC_KEY_VARIABLE: &str = vars::LLM_API_KEY;

/// Every variable that may carry an LLM key: removed from the control plane's environment.
pub const KEY_VARIABLES: [&str; 3] = vars::LLM_KEY_VARIABLES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Environment,
    Prompt,
}

#[derive(Debug, Clone)]
pub struct LlmKey {
    /// The variable the runner gets it under.
    pub variable: &'static str,
    pub value: Secret,
    pub origin: KeyOrigin,
}

/// What the runner will use, as far as the CLI knows it.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub provider: Provider,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub key: Option<LlmKey>,
}

impl LlmSettings {
    /// One line for banners and logs; says whether a key is set, never what it is.
    pub fn summary(&self) -> String {
        let model = self
            .model
            .as_deref()
            .unwrap_or("the runner's default model");
        let base = self
            .base_url
            .as_deref()
            .map(|u| format!(" at {u}"))
            .unwrap_or_default();
        format!(
            "{} ({model}){base}; {}",
            self.provider.as_str(),
            self.key_note()
        )
    }

    pub fn key_note(&self) -> String {
        match &self.key {
            None => "no key needed".into(),
            Some(k) if k.origin == KeyOrigin::Prompt => {
                format!("key set ({}, entered at the prompt)", k.variable)
            }
            Some(k) => format!("key set ({})", k.variable),
        }
    }
}

/// Where a missing key can be asked for.
pub trait Prompter {
    /// Whether a person can answer (a terminal on standard input).
    fn is_interactive(&self) -> bool;
    /// Asks with hidden input.
    fn ask_hidden(&mut self, question: &str) -> std::io::Result<String>;
}

/// The real terminal. `rpassword` reads from `/dev/tty` with echo off and restores the
/// terminal afterwards.
pub struct Terminal;

impl Prompter for Terminal {
    fn is_interactive(&self) -> bool {
        std::io::stdin().is_terminal()
    }

    fn ask_hidden(&mut self, question: &str) -> std::io::Result<String> {
        // rpassword turns Ctrl-C into a raised SIGINT before it restores the terminal. With a
        // handler registered the signal is only recorded, the read returns `Interrupted` and
        // the terminal gets its echo back instead of being left silent by a dead process.
        let _sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        rpassword::prompt_password(question)
    }
}

/// Reads the provider and its key from `env` (non-blank values only), asking `prompter` for
/// a missing key.
pub fn resolve(
    env: &dyn Fn(&str) -> Option<String>,
    prompter: &mut dyn Prompter,
) -> Result<LlmSettings, LocalError> {
    let get = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let provider = match get(vars::LLM_PROVIDER) {
        None => Provider::Ollama,
        Some(raw) => Provider::parse(&raw).ok_or_else(|| {
            LocalError::Config(format!(
                "STIGMER_LLM_PROVIDER='{raw}' is not a provider; use anthropic, openai or ollama"
            ))
        })?,
    };
    let mut settings = LlmSettings {
        provider,
        model: get(vars::LLM_MODEL),
        base_url: get(vars::LLM_BASE_URL).or_else(|| match provider {
            Provider::Ollama => get(vars::OLLAMA_BASE_URL),
            _ => None,
        }),
        key: None,
    };
    let Some(variable) = provider.key_variable() else {
        return Ok(settings);
    };
    for name in [GENERIC_KEY_VARIABLE, variable] {
        if let Some(value) = get(name) {
            settings.key = Some(LlmKey {
                variable: if name == GENERIC_KEY_VARIABLE {
                    GENERIC_KEY_VARIABLE
                } else {
                    variable
                },
                value: Secret::new(value),
                origin: KeyOrigin::Environment,
            });
            return Ok(settings);
        }
    }
    if !prompter.is_interactive() {
        return Err(LocalError::Config(format!(
            "the {} provider needs an API key and {variable} is not set (nor {GENERIC_KEY_VARIABLE}); \
             there is no terminal to ask on, so nothing was started. \
             Set {variable} in the environment and run `stigmer local start` again.",
            provider.as_str()
        )));
    }
    let question = format!(
        "{variable} is not set. Enter the {} API key for the runner (input hidden): ",
        provider.label()
    );
    let answer = prompter.ask_hidden(&question).map_err(|e| match e.kind() {
        std::io::ErrorKind::Interrupted => {
            LocalError::Config("interrupted at the key prompt; nothing was started".into())
        }
        _ => LocalError::Config(format!(
            "cannot read the key from the terminal ({e}); set {variable} instead"
        )),
    })?;
    let answer = answer.trim().to_string();
    if answer.is_empty() {
        return Err(LocalError::Config(format!(
            "no key entered; nothing was started. Enter the key at the prompt or set {variable}."
        )));
    }
    if answer.chars().any(char::is_control) {
        return Err(LocalError::Config(
            "the key contains control characters; nothing was started. Paste it again.".into(),
        ));
    }
    settings.key = Some(LlmKey {
        variable,
        value: Secret::new(answer),
        origin: KeyOrigin::Prompt,
    });
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Scripted {
        interactive: bool,
        answer: std::io::Result<String>,
        asked: Vec<String>,
    }

    impl Scripted {
        fn new(interactive: bool, answer: &str) -> Self {
            Self {
                interactive,
                answer: Ok(answer.to_string()),
                asked: Vec::new(),
            }
        }
    }

    impl Prompter for Scripted {
        fn is_interactive(&self) -> bool {
            self.interactive
        }
        fn ask_hidden(&mut self, question: &str) -> std::io::Result<String> {
            self.asked.push(question.to_string());
            match &self.answer {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn ollama_needs_no_key_and_never_prompts() {
        let mut p = Scripted::new(true, "unused");
        let s = resolve(&env(&[]), &mut p).expect("resolves");
        assert_eq!(s.provider, Provider::Ollama);
        assert!(s.key.is_none());
        assert!(p.asked.is_empty());
        assert!(s.summary().contains("no key needed"));
    }

    #[test]
    fn a_set_key_is_used_without_prompting() {
        let mut p = Scripted::new(true, "unused");
        let s = resolve(
            &env(&[
                ("STIGMER_LLM_PROVIDER", "Anthropic"),
                ("ANTHROPIC_API_KEY", "sk-ant-1"),
            ]),
            &mut p,
        )
        .expect("resolves");
        let key = s.key.expect("key");
        assert_eq!(key.variable, "ANTHROPIC_API_KEY");
        assert_eq!(key.value.expose(), "sk-ant-1");
        assert_eq!(key.origin, KeyOrigin::Environment);
        assert!(p.asked.is_empty());
    }

    #[test]
    fn the_generic_variable_wins() {
        let mut p = Scripted::new(false, "");
        let s = resolve(
            &env(&[
                ("STIGMER_LLM_PROVIDER", "openai"),
                ("STIGMER_LLM_API_KEY", "generic"),
                ("OPENAI_API_KEY", "specific"),
            ]),
            &mut p,
        )
        .expect("resolves");
        let key = s.key.expect("key");
        assert_eq!(key.variable, "STIGMER_LLM_API_KEY");
        assert_eq!(key.value.expose(), "generic");
    }

    #[test]
    fn missing_key_without_a_terminal_names_the_variable() {
        let mut p = Scripted::new(false, "unused");
        let err = resolve(
            &env(&[("STIGMER_LLM_PROVIDER", "openai"), ("OPENAI_API_KEY", "  ")]),
            &mut p,
        )
        .expect_err("no key");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
        assert!(p.asked.is_empty());
    }

    #[test]
    fn missing_key_on_a_terminal_is_asked_for_and_trimmed() {
        let mut p = Scripted::new(true, "  sk-typed \n");
        let s = resolve(&env(&[("STIGMER_LLM_PROVIDER", "anthropic")]), &mut p).expect("resolves");
        let key = s.key.clone().expect("key");
        assert_eq!(key.value.expose(), "sk-typed");
        assert_eq!(key.variable, "ANTHROPIC_API_KEY");
        assert_eq!(key.origin, KeyOrigin::Prompt);
        assert_eq!(p.asked.len(), 1);
        assert!(p.asked[0].contains("ANTHROPIC_API_KEY"));
        assert!(!s.summary().contains("sk-typed"));
        assert!(!format!("{s:?}").contains("sk-typed"));
    }

    #[test]
    fn an_empty_answer_aborts() {
        let mut p = Scripted::new(true, "\n");
        let err =
            resolve(&env(&[("STIGMER_LLM_PROVIDER", "anthropic")]), &mut p).expect_err("empty");
        assert!(err.to_string().contains("no key entered"), "{err}");
    }

    #[test]
    fn an_interrupted_prompt_aborts() {
        let mut p = Scripted {
            interactive: true,
            answer: Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            )),
            asked: Vec::new(),
        };
        let err = resolve(&env(&[("STIGMER_LLM_PROVIDER", "anthropic")]), &mut p)
            .expect_err("interrupted");
        assert!(err.to_string().contains("interrupted"), "{err}");
    }

    #[test]
    fn unknown_provider_is_a_config_error() {
        let mut p = Scripted::new(true, "");
        let err =
            resolve(&env(&[("STIGMER_LLM_PROVIDER", "gemini")]), &mut p).expect_err("unknown");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("anthropic, openai or ollama"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "<redacted> Secret(<redacted>)");
    }
}
