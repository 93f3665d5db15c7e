//! From the agent's `mcp_servers` to what the runner starts or connects to: `${NAME}`
//! placeholders filled from the execution's environment, the stdio program found, and the
//! paths a confined server must be able to read.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use stigmer_proto::agent::v1::{McpServer, NetworkAccess, mcp_server::Transport};

use crate::sandbox::Network;

/// Starting (or connecting) and listing tools, when the agent sets no `start_timeout_secs`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a server's configuration cannot be used. The message names the server's field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("it names neither a stdio command nor an HTTP url")]
    NoTransport,
    #[error(
        "its {field} uses ${{{name}}}, which is set neither in the agent's env nor in the execution's runtime env"
    )]
    UnsetVariable { field: String, name: String },
    #[error("its {field} has an unterminated '${{' (write '$${{' for a literal one)")]
    Unterminated { field: String },
    #[error("its command is empty")]
    EmptyCommand,
    #[error(
        "its command '{command}' is a relative path; use a name looked up on PATH or an absolute path"
    )]
    RelativeCommand { command: String },
    #[error("its command '{command}' was not found on PATH ({path})")]
    NotFound { command: String, path: String },
    #[error("its command '{command}' does not exist or is not an executable file")]
    NotExecutable { command: String },
    #[error(
        "its program is in '{}', which would make that whole directory readable to the \
         confined server; install the server into a directory of its own (an npm prefix, a \
         virtualenv, /opt/<name>)", dir.display()
    )]
    TooBroad { dir: PathBuf },
    #[error("its url '{url}' is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("its header '{name}' is not a valid HTTP header: {reason}")]
    BadHeader { name: String, reason: String },
}

/// One server, ready to start.
#[derive(Debug, Clone)]
pub struct ServerPlan {
    pub name: String,
    pub kind: Kind,
    /// The server's own tool names the agent may call; empty: all.
    pub allow: Vec<String>,
    pub start_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Stdio(StdioPlan),
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

#[derive(Debug, Clone)]
pub struct StdioPlan {
    /// As written (for messages).
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub network: Network,
}

/// Resolves the placeholders of `server` against `vars` (agent env + runtime env).
pub fn plan(
    server: &McpServer,
    vars: &BTreeMap<String, String>,
) -> Result<ServerPlan, ConfigError> {
    let kind = match &server.transport {
        None => return Err(ConfigError::NoTransport),
        Some(Transport::Stdio(stdio)) => {
            let command = expand(&stdio.command, vars, "command")?;
            if command.trim().is_empty() {
                return Err(ConfigError::EmptyCommand);
            }
            let args = stdio
                .args
                .iter()
                .enumerate()
                .map(|(i, a)| expand(a, vars, &format!("args[{i}]")))
                .collect::<Result<_, _>>()?;
            let env = stdio
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), expand(v, vars, &format!("env.{k}"))?)))
                .collect::<Result<_, ConfigError>>()?;
            let network = match server.network() {
                NetworkAccess::Allow => Network::Allow,
                _ => Network::None,
            };
            Kind::Stdio(StdioPlan {
                command,
                args,
                env,
                network,
            })
        }
        Some(Transport::Http(http)) => {
            let url = expand(&http.url, vars, "url")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::BadUrl { url });
            }
            let headers = http
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), expand(v, vars, &format!("headers.{k}"))?)))
                .collect::<Result<_, ConfigError>>()?;
            Kind::Http { url, headers }
        }
    };
    Ok(ServerPlan {
        name: server.name.clone(),
        kind,
        allow: server.tools.clone(),
        start_timeout: match server.start_timeout_secs {
            0 => DEFAULT_START_TIMEOUT,
            secs => Duration::from_secs(u64::from(secs)),
        },
    })
}

/// Replaces `${NAME}` with the variable's value; `$${` stands for a literal `${`.
pub fn expand(
    text: &str,
    vars: &BTreeMap<String, String>,
    field: &str,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or_else(|| ConfigError::Unterminated {
                field: field.to_owned(),
            })?;
            let name = &tail[..end];
            let value = vars.get(name).ok_or_else(|| ConfigError::UnsetVariable {
                field: field.to_owned(),
                name: name.to_owned(),
            })?;
            out.push_str(value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where a stdio server's program is, and what a confined server must be able to read to run
/// it: the program's install root and, for a script, its interpreter's (`#!/usr/bin/env node`
/// finds `node` on `search_path`). Directories to put first on the server's `PATH` too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    pub read_paths: Vec<PathBuf>,
    pub path_dirs: Vec<PathBuf>,
}

/// Directories every confined command can read already (README, "What the sandbox
/// guarantees"): nothing to add for a program there.
const SYSTEM_DIRS: [&str; 6] = ["/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc"];

/// Finds `command` (absolute, or on `search_path`) and what it needs to read.
pub fn locate(command: &str, search_path: &str) -> Result<Program, ConfigError> {
    let path = find(command, search_path)?;
    let mut program = Program {
        path: path.clone(),
        read_paths: Vec::new(),
        path_dirs: Vec::new(),
    };
    add_install(&mut program, &path);
    if let Some(interpreter) = shebang_interpreter(&path)
        && let Ok(found) = find(&interpreter, search_path)
    {
        add_install(&mut program, &found);
    }
    // Nothing else of the user's: never their whole home, nor the root.
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(dir) = program
        .read_paths
        .iter()
        .find(|p| p.parent().is_none() || Some(p.as_path()) == home.as_deref())
    {
        return Err(ConfigError::TooBroad { dir: dir.clone() });
    }
    Ok(program)
}

fn find(command: &str, search_path: &str) -> Result<PathBuf, ConfigError> {
    if command.contains('/') {
        let path = Path::new(command);
        if !path.is_absolute() {
            return Err(ConfigError::RelativeCommand {
                command: command.to_owned(),
            });
        }
        if !is_executable(path) {
            return Err(ConfigError::NotExecutable {
                command: command.to_owned(),
            });
        }
        return Ok(path.to_path_buf());
    }
    std::env::split_paths(search_path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| ConfigError::NotFound {
            command: command.to_owned(),
            path: search_path.to_owned(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Adds the directory `found` is in to the PATH, and its install root to the read paths.
fn add_install(program: &mut Program, found: &Path) {
    if let Some(dir) = found.parent()
        && !program.path_dirs.iter().any(|d| d == dir)
    {
        program.path_dirs.push(dir.to_path_buf());
    }
    for path in [found.to_path_buf(), canonical(found)] {
        // A program in a system directory is readable already.
        if SYSTEM_DIRS.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        let root = install_root(&path);
        if !program.read_paths.contains(&root) {
            program.read_paths.push(root);
        }
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The directory an installed program belongs to: the one holding the outermost
/// `node_modules` (an npm prefix or project), else the prefix of a `bin` directory (a
/// virtualenv, `~/.local`, `/opt/tool`), else the program's own directory.
pub fn install_root(path: &Path) -> PathBuf {
    let mut prefix = PathBuf::new();
    for component in path.components() {
        if component == Component::Normal("node_modules".as_ref()) && prefix.parent().is_some() {
            return prefix;
        }
        prefix.push(component);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    match dir.file_name() {
        Some(name) if name == "bin" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The interpreter a script names on its first line: `#!/usr/bin/node` → `/usr/bin/node`,
/// `#!/usr/bin/env [-S] node` → `node`.
fn shebang_interpreter(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = std::str::from_utf8(head.get(..n)?).ok()?;
    let line = line.strip_prefix("#!")?.lines().next()?;
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if first.ends_with("/env") {
        words.find(|w| !w.starts_with('-')).map(str::to_owned)
    } else {
        Some(first.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([("TOKEN".to_owned(), "s3cret".to_owned())])
    }

    #[test]
    fn placeholders_are_filled_and_unset_ones_named() {
        assert_eq!(
            expand("Bearer ${TOKEN}", &vars(), "x").expect("ok"),
            "Bearer s3cret"
        );
        assert_eq!(
            expand("$5 $${TOKEN}", &vars(), "x").expect("ok"),
            "$5 ${TOKEN}"
        );
        let err = expand("${NOPE}", &vars(), "headers.Authorization").expect_err("unset");
        assert_eq!(
            err.to_string(),
            "its headers.Authorization uses ${NOPE}, which is set neither in the agent's env \
             nor in the execution's runtime env"
        );
        assert!(matches!(
            expand("${TOKEN", &vars(), "x"),
            Err(ConfigError::Unterminated { .. })
        ));
    }

    #[test]
    fn install_roots() {
        let root = |p: &str| install_root(Path::new(p));
        assert_eq!(
            root("/home/u/srv/node_modules/@scope/pkg/dist/index.js"),
            Path::new("/home/u/srv")
        );
        assert_eq!(
            root("/home/u/.npm-global/lib/node_modules/pkg/bin/cli.js"),
            Path::new("/home/u/.npm-global/lib")
        );
        assert_eq!(
            root("/home/u/venv/bin/mcp-server"),
            Path::new("/home/u/venv")
        );
        assert_eq!(root("/opt/tool/server"), Path::new("/opt/tool"));
    }

    #[test]
    fn a_script_brings_its_interpreter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("prefix/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let interp = bin.join("myinterp");
        std::fs::write(&interp, "#!/bin/sh\n").expect("write");
        let tool = dir.path().join("tools/node_modules/t/cli.js");
        std::fs::create_dir_all(tool.parent().expect("parent")).expect("mkdir");
        std::fs::write(&tool, "#!/usr/bin/env myinterp\n").expect("write");
        for p in [&interp, &tool] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let program =
            locate(tool.to_str().expect("utf-8"), bin.to_str().expect("utf-8")).expect("found");
        assert!(
            program.read_paths.contains(&dir.path().join("tools")),
            "{program:?}"
        );
        assert!(
            program.read_paths.contains(&dir.path().join("prefix")),
            "{program:?}"
        );
        assert!(program.path_dirs.contains(&bin), "{program:?}");
        let err = locate("no-such-program", "/nonexistent").expect_err("missing");
        assert!(matches!(err, ConfigError::NotFound { .. }), "{err}");
        assert!(matches!(
            locate("bin/x", "/usr/bin"),
            Err(ConfigError::RelativeCommand { .. })
        ));
        assert!(matches!(
            locate("/nonexistent/server", "/usr/bin"),
            Err(ConfigError::NotExecutable { .. })
        ));
    }
}
