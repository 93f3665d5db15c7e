//! Cloud mode: a session's tool calls run in a Daytona sandbox, through its toolbox.
//!
//! Paths are confined lexically to the work directory (the same check and `PathEscape` error as
//! the local sandbox). That is a courtesy to the model, not the isolation boundary: commands can
//! touch anything in the sandbox, which is the point of running them there.

use std::path::Path;
use std::time::Duration;

use super::client::{DaytonaClient, Toolbox};
use super::error::DaytonaError;
use crate::printable;
use crate::sandbox::capped::CappedBuffer;
use crate::sandbox::paths::relative_to_session;
use crate::sandbox::{CommandOutput, CommandRequest, DirEntry, MAX_READ_BYTES, SandboxError};

/// Where sessions work inside the sandbox, under the image's default user.
pub const DEFAULT_WORK_DIR: &str = "/home/daytona/workspace";
/// How long the runner waits beyond the command's timeout for Daytona to answer, so that
/// Daytona's own timeout (which kills the process group) normally ends the command first.
const ANSWER_GRACE: Duration = Duration::from_secs(5);
const FOLDER_MODE: &str = "755";

#[derive(Debug, Clone)]
pub struct DaytonaSandbox {
    client: DaytonaClient,
    toolbox: Toolbox,
    /// Absolute, normalised path inside the sandbox.
    work_dir: String,
}

impl DaytonaSandbox {
    /// A handle on a started sandbox; `work_dir` must be absolute and is made if missing.
    pub async fn attach(
        client: DaytonaClient,
        toolbox: Toolbox,
        work_dir: &str,
    ) -> Result<Self, SandboxError> {
        let work_dir = normalise_work_dir(work_dir)?;
        client
            .create_folder(&toolbox, &work_dir, FOLDER_MODE)
            .await
            .map_err(SandboxError::Daytona)?;
        Ok(Self {
            client,
            toolbox,
            work_dir,
        })
    }

    /// Daytona's id of the sandbox (what the session stores).
    pub fn id(&self) -> &str {
        &self.toolbox.sandbox_id
    }

    pub fn work_dir(&self) -> &str {
        &self.work_dir
    }

    pub fn describe(&self) -> String {
        format!(
            "Daytona sandbox {}, working directory {}",
            self.id(),
            self.work_dir
        )
    }

    /// Runs `sh -c <command>` in the work directory. Daytona enforces the timeout (rounded up
    /// to whole seconds) and kills the process group; the runner stops waiting a little later
    /// in case Daytona does not answer. Cancellation stops waiting at once; the command then
    /// runs on until Daytona's timeout, since the toolbox offers no way to kill it.
    pub async fn run_command(
        &self,
        req: CommandRequest<'_>,
    ) -> Result<CommandOutput, SandboxError> {
        if req.cancel.is_cancelled() {
            return Err(SandboxError::Cancelled);
        }
        let timeout_s = req.timeout.as_secs() + u64::from(req.timeout.subsec_nanos() > 0);
        let timeout_s = timeout_s.max(1);
        // Quoted so that the toolbox runs the text as one shell script however it splits
        // the command line.
        let command = format!("sh -c {}", shell_quote(req.command));
        let execute = self.client.execute(
            &self.toolbox,
            &command,
            Some(&self.work_dir),
            req.env,
            timeout_s,
        );
        let patience = Duration::from_secs(timeout_s) + ANSWER_GRACE;
        let answer = tokio::select! {
            biased;
            () = req.cancel.cancelled() => return Err(SandboxError::Cancelled),
            answer = tokio::time::timeout(patience, execute) => answer,
        };
        match answer {
            Ok(Ok(done)) => Ok(capped(Some(done.exit_code), &done.result, req.output_limit)),
            Ok(Err(DaytonaError::CommandTimedOut { .. })) | Err(_) => {
                Ok(timed_out(req.output_limit))
            }
            Ok(Err(e)) => Err(SandboxError::Daytona(e)),
        }
    }

    /// The whole file; refused above [`MAX_READ_BYTES`].
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let target = self.resolve(path)?;
        let limit = usize::try_from(MAX_READ_BYTES).unwrap_or(usize::MAX);
        match self.client.download(&self.toolbox, &target, limit).await {
            Ok(bytes) => Ok(bytes),
            Err(DaytonaError::TooLarge { .. }) => Err(SandboxError::FileTooLarge {
                path: printable::escape(path),
                size: self.size_of(&target).await.unwrap_or(MAX_READ_BYTES + 1),
                limit: MAX_READ_BYTES,
            }),
            Err(e) => Err(remote(e, path)),
        }
    }

    /// Creates or replaces the file, creating missing parent directories.
    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let target = self.resolve(path)?;
        if target == self.work_dir {
            return Err(SandboxError::IsADirectory {
                path: printable::escape(path),
            });
        }
        if let Some(parent) = parent_of(&target).filter(|p| *p != self.work_dir) {
            self.client
                .create_folder(&self.toolbox, parent, FOLDER_MODE)
                .await
                .map_err(|e| remote(e, path))?;
        }
        self.client
            .upload(&self.toolbox, &target, contents.to_vec())
            .await
            .map_err(|e| remote(e, path))
    }

    /// Entries sorted by name.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        let target = self.resolve(path)?;
        let files = self
            .client
            .list_files(&self.toolbox, &target)
            .await
            .map_err(|e| remote(e, path))?;
        let mut entries: Vec<DirEntry> = files
            .into_iter()
            .map(|f| DirEntry {
                // Escaped: a name with a newline must not forge a line of the listing.
                name: printable::escape(&f.name),
                is_dir: f.is_dir,
                size: f.size,
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The absolute path inside the sandbox for a path the model gave.
    fn resolve(&self, raw: &str) -> Result<String, SandboxError> {
        let rel = relative_to_session(Path::new(&self.work_dir), raw)?;
        if rel == Path::new(".") {
            return Ok(self.work_dir.clone());
        }
        // `raw` is UTF-8 and resolution only drops components, so this is lossless.
        Ok(format!("{}/{}", self.work_dir, rel.to_string_lossy()))
    }

    async fn size_of(&self, target: &str) -> Option<u64> {
        let (parent, name) = target.rsplit_once('/')?;
        let parent = if parent.is_empty() { "/" } else { parent };
        let files = self.client.list_files(&self.toolbox, parent).await.ok()?;
        files.into_iter().find(|f| f.name == name).map(|f| f.size)
    }
}

fn normalise_work_dir(raw: &str) -> Result<String, SandboxError> {
    let invalid = |reason| SandboxError::InvalidPath {
        path: raw.to_owned(),
        reason,
    };
    if !raw.starts_with('/') {
        return Err(invalid("the sandbox work directory must be absolute"));
    }
    let rel = relative_to_session(Path::new("/"), raw)
        .map_err(|_| invalid("the sandbox work directory must not contain '..' or NUL"))?;
    if rel == Path::new(".") {
        return Err(invalid("the sandbox work directory must not be '/'"));
    }
    Ok(format!("/{}", rel.to_string_lossy()))
}

fn parent_of(target: &str) -> Option<&str> {
    target
        .rsplit_once('/')
        .map(|(parent, _)| parent)
        .filter(|p| !p.is_empty())
}

/// A toolbox 404 on a file call means the path, not the sandbox, is missing.
fn remote(e: DaytonaError, path: &str) -> SandboxError {
    match e.status() {
        Some(404) => SandboxError::NotFound {
            path: printable::escape(path),
        },
        _ => SandboxError::Daytona(e),
    }
}

fn capped(exit_code: Option<i32>, output: &str, limit: usize) -> CommandOutput {
    let mut buf = CappedBuffer::new(limit);
    buf.push(output.as_bytes());
    let truncated_bytes = buf.dropped();
    CommandOutput {
        exit_code,
        output: buf.into_string(),
        timed_out: exit_code.is_none(),
        truncated_bytes,
    }
}

/// Daytona's 408 carries no output, so none can be shown.
fn timed_out(limit: usize) -> CommandOutput {
    capped(None, "", limit)
}

/// Single-quotes `text` for sh: `'` becomes `'\''`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
