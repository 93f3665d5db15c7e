//! Where configuration values come from (the process environment over an optional `.env`),
//! where each one came from, and the [`Reader`] that collects every problem while values are
//! read. Its own module so that the settings readers (`config`, `config::cloud`, the sandbox
//! settings) depend on it and not on each other.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stigmer_contract::env as vars;

/// Where configuration values come from: the process environment first, then `.env`.
#[derive(Debug, Clone, Default)]
pub struct Env {
    process: HashMap<String, String>,
    dotenv: HashMap<String, String>,
    dotenv_state: DotEnvState,
}

/// The variable that turns the `.env` lookup off (`off`) or on (`on`, the default). Read from
/// the process environment only: a `.env` file cannot switch itself on.
pub const DOTENV_SWITCH: &str = vars::DOTENV;
pub(crate) const DEFAULT_SANDBOX_ROOT: &str = "./workspace";

/// What became of the `.env` lookup, for the banner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DotEnvState {
    /// `STIGMER_DOTENV=off` (as `stigmer local start` runs the runner).
    #[default]
    Disabled,
    /// No `.env` at this path.
    Absent(PathBuf),
    /// Read from this (canonical) path.
    Loaded(PathBuf),
}

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Environment,
    DotEnv(PathBuf),
    Default,
}

impl Env {
    /// The real process environment plus `./.env` when present and allowed (never written
    /// back into the process environment, so tool commands cannot inherit it).
    ///
    /// The runner must never take configuration from a file a tool command could have
    /// written: a `.env` redirecting `STIGMER_LLM_BASE_URL` would send the LLM key to an
    /// attacker at the next start. So a `.env` inside the sandbox root (where commands
    /// write), or in a working directory inside it, is refused with an error rather than
    /// read, and `STIGMER_DOTENV=off` turns the lookup off altogether.
    pub fn load() -> Result<Self, ConfigError> {
        let cwd = std::env::current_dir().map_err(|e| {
            ConfigError::single(
                "(.env)",
                format!("cannot tell the working directory to look for .env in: {e}"),
            )
        })?;
        Self::load_from(std::env::vars().collect(), &cwd)
    }

    /// [`Env::load`] with the process environment `process`, looking for `.env` in `dir`
    /// (relative settings such as `SANDBOX_ROOT_DIR` are taken relative to `dir`, the
    /// runner's working directory).
    pub fn load_from(process: HashMap<String, String>, dir: &Path) -> Result<Self, ConfigError> {
        let mut env = Self {
            process,
            dotenv: HashMap::new(),
            dotenv_state: DotEnvState::Disabled,
        };
        let switch = env
            .process
            .get(DOTENV_SWITCH)
            .map(|v| v.trim().to_ascii_lowercase());
        match switch.as_deref() {
            None | Some("" | "on" | "true" | "1") => {}
            Some("off" | "false" | "0") => return Ok(env),
            Some(_) => {
                return Err(ConfigError::single(
                    DOTENV_SWITCH,
                    format!(
                        "'{}' is not a switch; use on (read ./.env, the default) or off",
                        env.process.get(DOTENV_SWITCH).map_or("", |v| v.trim())
                    ),
                ));
            }
        }
        let path = dir.join(".env");
        if matches!(std::fs::symlink_metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            env.dotenv_state = DotEnvState::Absent(path);
            return Ok(env);
        }
        let unreadable = |e: &dyn fmt::Display| {
            ConfigError::single("(.env)", format!("cannot read {}: {e}", path.display()))
        };
        // Canonical: a symlink is judged (and read) by what it points to.
        let file = std::fs::canonicalize(&path).map_err(|e| unreadable(&e))?;
        let dotenv = dotenvy::from_path_iter(&file)
            .map_err(|e| unreadable(&e))?
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(|e| {
                ConfigError::single("(.env)", format!("cannot parse {}: {e}", file.display()))
            })?;
        // The file must not move the sandbox root away from itself: it is checked against the
        // root the environment (or the default) names and against the one it names.
        let blank = |v: &&String| !v.trim().is_empty();
        let roots = [
            Some(
                env.process
                    .get(vars::SANDBOX_ROOT_DIR)
                    .filter(blank)
                    .map_or(DEFAULT_SANDBOX_ROOT, |v| v.trim()),
            ),
            dotenv
                .get(vars::SANDBOX_ROOT_DIR)
                .filter(blank)
                .map(|v| v.trim()),
        ];
        let folder = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        // A root that does not exist yet holds no file, so nothing there can be refused.
        for root in roots
            .into_iter()
            .flatten()
            .filter_map(|root| std::fs::canonicalize(dir.join(root)).ok())
        {
            if file.starts_with(&root) || folder.starts_with(&root) {
                return Err(ConfigError::single(
                    "(.env)",
                    format!(
                        "refusing to read {}: it lies inside the sandbox root {} \
                         (SANDBOX_ROOT_DIR), where tool commands write files; move it out of \
                         there, or set {DOTENV_SWITCH}=off and pass settings in the environment",
                        path.display(),
                        root.display()
                    ),
                ));
            }
        }
        env.dotenv = dotenv;
        env.dotenv_state = DotEnvState::Loaded(file);
        Ok(env)
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            process: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dotenv: HashMap::new(),
            dotenv_state: DotEnvState::Disabled,
        }
    }

    pub fn with_dotenv<'a>(mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.dotenv = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.dotenv_state = DotEnvState::Loaded(PathBuf::from(".env"));
        self
    }

    /// A set, non-blank value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw(key).map(|(value, _)| value)
    }

    /// Where [`Env::get`]'s value for `key` comes from; `Default` when it is unset.
    pub fn origin(&self, key: &str) -> Origin {
        match self.raw(key) {
            None => Origin::Default,
            Some((_, false)) => Origin::Environment,
            Some((_, true)) => match &self.dotenv_state {
                DotEnvState::Loaded(path) => Origin::DotEnv(path.clone()),
                _ => Origin::DotEnv(PathBuf::from(".env")),
            },
        }
    }

    /// The value and whether it came from `.env`. A variable set in the process environment
    /// wins even when blank (which then means unset).
    fn raw(&self, key: &str) -> Option<(&str, bool)> {
        let (value, from_file) = match self.process.get(key) {
            Some(v) => (v, false),
            None => (self.dotenv.get(key)?, true),
        };
        let value = value.trim();
        (!value.is_empty()).then_some((value, from_file))
    }

    pub fn dotenv_state(&self) -> &DotEnvState {
        &self.dotenv_state
    }
}

/// Where each setting came from (names only, never values), kept in [`Config`] for the
/// banner.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    dotenv: DotEnvState,
    origins: HashMap<String, Origin>,
}

impl Sources {
    pub(crate) fn of(env: &Env) -> Self {
        let origins = env
            .process
            .keys()
            .chain(env.dotenv.keys())
            .filter_map(|key| match env.origin(key) {
                Origin::Default => None,
                origin => Some((key.clone(), origin)),
            })
            .collect();
        Self {
            dotenv: env.dotenv_state.clone(),
            origins,
        }
    }

    pub fn dotenv(&self) -> &DotEnvState {
        &self.dotenv
    }

    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Where the first set variable of `keys` (in the order the setting reads them) came
    /// from: `environment: KEY`, `.env /path/.env: KEY`, or `default`.
    pub fn describe(&self, keys: &[&str]) -> String {
        keys.iter()
            .find_map(|key| match self.origin(key) {
                Origin::Default => None,
                Origin::Environment => Some(format!("environment: {key}")),
                Origin::DotEnv(path) => Some(format!(".env {}: {key}", path.display())),
            })
            .unwrap_or_else(|| "default".to_string())
    }
}

/// One configuration problem, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: String,
    pub message: String,
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn single(variable: &str, message: String) -> Self {
        Self {
            problems: vec![Problem {
                variable: variable.to_string(),
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration problem(s)", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  - {}: {}", p.variable, p.message)?;
        }
        Ok(())
    }
}

/// Collects problems while reading values, so that all of them are reported at once.
pub(crate) struct Reader<'a> {
    env: &'a Env,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(env: &'a Env) -> Self {
        Self {
            env,
            problems: Vec::new(),
        }
    }

    /// Every problem found, or nothing.
    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            variable: variable.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn string(&self, key: &str) -> Option<String> {
        self.env.get(key).map(str::to_string)
    }

    /// A number within bounds; `default` when unset.
    pub(crate) fn number<T>(&mut self, keys: &[&str], default: T, min: T, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some((key, raw)) = keys
            .iter()
            .find_map(|k| self.env.get(k).map(|v| (*k, v.to_string())))
        else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            Ok(_) => {
                self.problem(
                    key,
                    format!("'{raw}' is out of range; use a value from {min} to {max}"),
                );
                default
            }
            // An integer too large (or negative) for the type is out of range, not "not a
            // number".
            Err(_) if is_integer(&raw) => {
                self.problem(
                    key,
                    format!("'{raw}' is out of range; use a value from {min} to {max}"),
                );
                default
            }
            Err(_) => {
                self.problem(
                    key,
                    format!("'{raw}' is not a number; use a value from {min} to {max}"),
                );
                default
            }
        }
    }

    pub(crate) fn millis(&mut self, key: &str, default_ms: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.number(&[key], default_ms, min, max))
    }

    pub(crate) fn secs(&mut self, key: &str, default_s: u64, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.number(&[key], default_s, min, max))
    }
}

fn is_integer(raw: &str) -> bool {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}
