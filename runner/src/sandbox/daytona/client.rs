//! A small typed client for the parts of the Daytona REST API the runner uses: sandbox
//! lifecycle on the API, and process and file calls on the sandbox's toolbox.
//!
//! Every call carries the bearer key (a sensitive header, never logged) and is retried on 429,
//! 5xx and connection failures with bounded attempts, honouring `Retry-After`. Calls that must
//! not run twice (executing a command, creating a sandbox) are only replayed when Daytona cannot
//! have acted on them.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::error::DaytonaError;
use crate::backoff::{Backoff, parse_retry_after};
use stigmer_contract::Secret;
use stigmer_contract::error_chain;

pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";

/// Error bodies are read up to this size; enough for any message, bounded against a proxy that
/// answers with a large page.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// JSON answers (command output included) above this are refused rather than buffered.
const MAX_JSON_BODY: usize = 64 * 1024 * 1024;
/// Daytona messages longer than this are cut in error displays.
const MAX_MESSAGE_CHARS: usize = 500;
/// Create and start are asynchronous; the state is polled this often, backing off.
const POLL: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(1),
};
/// Pages of a listing followed at most; a server repeating cursors must not loop forever.
const MAX_PAGES: usize = 1000;
/// Extra time given to an HTTP request that carries a command, beyond the command's own timeout.
const EXECUTE_GRACE: Duration = Duration::from_secs(10);
/// Retries back off up to this, unless the server asks for a `Retry-After`.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(8);

/// How to reach Daytona. `Debug` is derived: the key is a [`Secret`], shown redacted.
#[derive(Debug, Clone)]
pub struct DaytonaSettings {
    /// e.g. `https://app.daytona.io/api` (`DAYTONA_API_URL`).
    pub api_url: String,
    /// `DAYTONA_API_KEY`; never logged.
    pub api_key: Secret,
    /// Bound on each lifecycle and file request (connect included).
    pub request_timeout: Duration,
    /// Attempts for retryable failures, at least one.
    pub max_attempts: u32,
    /// First wait between attempts, doubling up to 8 s.
    pub retry_backoff: Duration,
}

impl DaytonaSettings {
    /// Production defaults for the hosted API.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_url: DEFAULT_API_URL.to_owned(),
            api_key: Secret::new(api_key.into()),
            request_timeout: Duration::from_secs(30),
            max_attempts: 4,
            retry_backoff: Duration::from_millis(500),
        }
    }
}

/// The body of `POST /sandbox`. Intervals are in minutes, as Daytona counts them.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandbox {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_delete_interval: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_block_all: Option<bool>,
}

/// Lifecycle states the runner acts on; the others are `Other` and waited through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Starting,
    Started,
    Stopping,
    Stopped,
    Archived,
    Destroying,
    Destroyed,
    Error,
    BuildFailed,
    #[default]
    #[serde(other)]
    Other,
}

impl SandboxState {
    /// Terminal failures: the sandbox cannot be used and will not recover by waiting.
    pub fn is_failed(self) -> bool {
        matches!(self, Self::Error | Self::BuildFailed)
    }

    pub fn is_gone(self) -> bool {
        matches!(self, Self::Destroying | Self::Destroyed)
    }
}

/// A sandbox as `GET /sandbox/{id}` describes it (the fields the runner uses).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    pub id: String,
    #[serde(default)]
    pub state: SandboxState,
    /// The state as Daytona spelled it, for messages.
    #[serde(skip)]
    pub state_name: String,
    #[serde(default)]
    pub error_reason: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub toolbox_proxy_url: Option<String>,
}

/// Where a sandbox's toolbox (process and file calls) is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolbox {
    pub sandbox_id: String,
    /// `{toolboxProxyUrl}` without a trailing slash; calls go to `{proxy_url}/{sandbox_id}/...`.
    pub proxy_url: String,
}

/// What a command did, as `process/execute` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    pub exit_code: i32,
    /// Merged stdout and stderr.
    #[serde(default)]
    pub result: String,
}

/// One entry of `GET /files`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub name: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecuteBody<'a> {
    command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    envs: &'a BTreeMap<String, String>,
    timeout: u64,
}

/// `GET /sandbox` answers a plain array, or a page with a cursor to the next one.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListPage {
    Plain(Vec<RawSandbox>),
    Paged {
        items: Vec<RawSandbox>,
        #[serde(default, rename = "nextCursor")]
        next_cursor: Option<String>,
    },
}

/// Daytona's error JSON; `message` is a string or (validation errors) a list of strings.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiErrorBody {
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Deserialised in two steps so that the state's spelling survives for messages.
#[derive(Deserialize)]
#[serde(transparent)]
struct RawSandbox {
    info: serde_json::Value,
}

impl RawSandbox {
    fn into_info(self, operation: &'static str) -> Result<SandboxInfo, DaytonaError> {
        let state_name = self
            .info
            .get("state")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_owned();
        let mut info: SandboxInfo =
            serde_json::from_value(self.info).map_err(|e| DaytonaError::Decode {
                operation,
                detail: e.to_string(),
            })?;
        info.state_name = state_name;
        Ok(info)
    }
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Repeating it is harmless (reads, deletes, start, file writes).
    Safe,
    /// Only when Daytona cannot have acted on it: 429, 503, or no connection.
    Unprocessed,
}

enum Payload {
    Empty,
    Json(Vec<u8>),
    File { name: String, bytes: Vec<u8> },
}

struct Call {
    operation: &'static str,
    method: Method,
    url: Url,
    payload: Payload,
    replay: Replay,
    timeout: Duration,
}

struct Failure {
    error: DaytonaError,
    retry_after: Option<Duration>,
    retryable: bool,
}

/// A Daytona API client; cheap to clone (the connection pool is shared). `Debug` shows no key.
#[derive(Debug, Clone)]
pub struct DaytonaClient {
    http: reqwest::Client,
    api_url: String,
    /// Only used to redact the key from error bodies that might echo it.
    api_key: Secret,
    request_timeout: Duration,
    max_attempts: u32,
    backoff: Backoff,
}

impl DaytonaClient {
    pub fn new(settings: DaytonaSettings) -> Result<Self, DaytonaError> {
        if settings.api_key.expose().trim().is_empty() {
            return Err(DaytonaError::Config(
                "DAYTONA_API_KEY is empty; cloud mode needs a Daytona API key".into(),
            ));
        }
        let api_url = settings.api_url.trim_end_matches('/').to_owned();
        Url::parse(&api_url).map_err(|e| {
            DaytonaError::Config(format!("DAYTONA_API_URL '{api_url}' is not a URL: {e}"))
        })?;
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", settings.api_key.expose().trim())).map_err(
                |_| {
                    DaytonaError::Config(
                        "DAYTONA_API_KEY contains characters not allowed in an HTTP header".into(),
                    )
                },
            )?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(settings.request_timeout)
            .user_agent(concat!("stigmer-agent-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                DaytonaError::Config(format!("cannot build the HTTP client: {}", error_chain(&e)))
            })?;
        Ok(Self {
            http,
            api_url,
            api_key: settings.api_key,
            request_timeout: settings.request_timeout,
            max_attempts: settings.max_attempts.max(1),
            backoff: Backoff {
                first: settings.retry_backoff,
                max: MAX_RETRY_BACKOFF.max(settings.retry_backoff),
            },
        })
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Asks for a new sandbox; it starts asynchronously (see [`Self::wait_until_started`]).
    pub async fn create_sandbox(&self, spec: &CreateSandbox) -> Result<SandboxInfo, DaytonaError> {
        let operation = "creating a sandbox";
        let body = serde_json::to_vec(spec).map_err(|e| DaytonaError::Decode {
            operation,
            detail: e.to_string(),
        })?;
        let call = self.call(
            operation,
            Method::POST,
            self.api(&["sandbox"])?,
            Replay::Unprocessed,
        );
        self.sandbox_json(Call {
            payload: Payload::Json(body),
            ..call
        })
        .await
    }

    /// The sandbox, or `SandboxNotFound` when it does not exist.
    pub async fn get_sandbox(&self, id: &str) -> Result<SandboxInfo, DaytonaError> {
        let call = self.call(
            "reading a sandbox",
            Method::GET,
            self.api(&["sandbox", id])?,
            Replay::Safe,
        );
        self.sandbox_json(call)
            .await
            .map_err(|e| not_found_as_gone(e, id))
    }

    /// Sandboxes carrying all of `labels`, following cursor pages.
    pub async fn list_sandboxes(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<SandboxInfo>, DaytonaError> {
        let operation = "listing sandboxes";
        let labels_json = serde_json::to_string(labels).map_err(|e| DaytonaError::Decode {
            operation,
            detail: e.to_string(),
        })?;
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.api(&["sandbox"])?;
            url.query_pairs_mut().append_pair("labels", &labels_json);
            if let Some(c) = &cursor {
                url.query_pairs_mut().append_pair("cursor", c);
            }
            let call = self.call(operation, Method::GET, url, Replay::Safe);
            let (items, next) = match self.json::<ListPage>(call).await? {
                ListPage::Plain(items) => (items, None),
                ListPage::Paged { items, next_cursor } => (items, next_cursor),
            };
            for raw in items {
                all.push(raw.into_info(operation)?);
            }
            match next.filter(|n| !n.is_empty()) {
                Some(next) if cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
                _ => return Ok(all),
            }
        }
        Err(DaytonaError::Decode {
            operation,
            detail: format!("more than {MAX_PAGES} pages; is the cursor advancing?"),
        })
    }

    /// Asks a stopped sandbox to start; it starts asynchronously.
    pub async fn start_sandbox(&self, id: &str) -> Result<(), DaytonaError> {
        let url = self.api(&["sandbox", id, "start"])?;
        let call = self.call("starting a sandbox", Method::POST, url, Replay::Safe);
        self.send(&call)
            .await
            .map_err(|e| not_found_as_gone(e, id))?;
        Ok(())
    }

    /// Deletes the sandbox; one that is already gone counts as deleted.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), DaytonaError> {
        let call = self.call(
            "deleting a sandbox",
            Method::DELETE,
            self.api(&["sandbox", id])?,
            Replay::Safe,
        );
        match self.send(&call).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Polls until the sandbox is `started`, backing off from 100 ms to 1 s. Fails at once on
    /// `error` / `build_failed` (with Daytona's reason) and when the sandbox disappears.
    pub async fn wait_until_started(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<SandboxInfo, DaytonaError> {
        let began = Instant::now();
        let mut polls = 0;
        loop {
            let info = self.get_sandbox(id).await?;
            if info.state == SandboxState::Started {
                return Ok(info);
            }
            if info.state.is_failed() || info.state.is_gone() {
                return Err(DaytonaError::SandboxFailed {
                    id: id.to_owned(),
                    reason: info
                        .error_reason
                        .clone()
                        .unwrap_or_else(|| "no reason given".to_owned()),
                    state: info.state_name,
                });
            }
            polls += 1;
            let wait = POLL.delay(polls, None, 0.0);
            if Instant::now() + wait > deadline {
                return Err(DaytonaError::StartTimeout {
                    id: id.to_owned(),
                    state: info.state_name,
                    waited: began.elapsed(),
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The toolbox of a sandbox; falls back to `{api_url}/toolbox` when Daytona names none.
    pub fn toolbox(&self, info: &SandboxInfo) -> Toolbox {
        let proxy = info
            .toolbox_proxy_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .map_or_else(|| format!("{}/toolbox", self.api_url), str::to_owned);
        Toolbox {
            sandbox_id: info.id.clone(),
            proxy_url: proxy.trim_end_matches('/').to_owned(),
        }
    }

    /// Runs `command` in the sandbox. Daytona kills it after `timeout_s` seconds and answers
    /// 408, reported as `CommandTimedOut`.
    pub async fn execute(
        &self,
        toolbox: &Toolbox,
        command: &str,
        cwd: Option<&str>,
        envs: &BTreeMap<String, String>,
        timeout_s: u64,
    ) -> Result<Execution, DaytonaError> {
        let operation = "executing a command";
        let body = ExecuteBody {
            command,
            cwd,
            envs,
            timeout: timeout_s,
        };
        let body = serde_json::to_vec(&body).map_err(|e| DaytonaError::Decode {
            operation,
            detail: e.to_string(),
        })?;
        let url = self.tool(toolbox, &["process", "execute"], &[])?;
        let call = Call {
            payload: Payload::Json(body),
            timeout: Duration::from_secs(timeout_s) + EXECUTE_GRACE,
            ..self.call(operation, Method::POST, url, Replay::Unprocessed)
        };
        match self.json::<Execution>(call).await {
            Err(e) if e.status() == Some(408) => Err(DaytonaError::CommandTimedOut { timeout_s }),
            other => other,
        }
    }

    /// Creates or replaces the file at the absolute `path` (multipart field `file`).
    pub async fn upload(
        &self,
        toolbox: &Toolbox,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), DaytonaError> {
        let name = path.rsplit('/').next().unwrap_or(path).to_owned();
        let url = self.tool(toolbox, &["files", "upload"], &[("path", path)])?;
        let call = Call {
            payload: Payload::File { name, bytes },
            ..self.call("uploading a file", Method::POST, url, Replay::Safe)
        };
        self.send(&call).await?;
        Ok(())
    }

    /// The file's bytes; refuses (without buffering it) a file larger than `limit`.
    pub async fn download(
        &self,
        toolbox: &Toolbox,
        path: &str,
        limit: usize,
    ) -> Result<Vec<u8>, DaytonaError> {
        let operation = "downloading a file";
        let url = self.tool(toolbox, &["files", "download"], &[("path", path)])?;
        let response = self
            .send(&self.call(operation, Method::GET, url, Replay::Safe))
            .await?;
        read_limited(response, limit).await.map_err(|e| match e {
            BodyError::TooLarge => DaytonaError::TooLarge { operation, limit },
            BodyError::Read(detail) => DaytonaError::Decode { operation, detail },
        })
    }

    pub async fn list_files(
        &self,
        toolbox: &Toolbox,
        path: &str,
    ) -> Result<Vec<FileInfo>, DaytonaError> {
        let url = self.tool(toolbox, &["files"], &[("path", path)])?;
        self.json(self.call("listing files", Method::GET, url, Replay::Safe))
            .await
    }

    pub async fn delete_file(&self, toolbox: &Toolbox, path: &str) -> Result<(), DaytonaError> {
        let url = self.tool(toolbox, &["files"], &[("path", path)])?;
        self.send(&self.call("deleting a file", Method::DELETE, url, Replay::Safe))
            .await?;
        Ok(())
    }

    /// Creates the folder and its missing parents; an existing folder is fine.
    pub async fn create_folder(
        &self,
        toolbox: &Toolbox,
        path: &str,
        mode: &str,
    ) -> Result<(), DaytonaError> {
        let url = self.tool(
            toolbox,
            &["files", "folder"],
            &[("path", path), ("mode", mode)],
        )?;
        self.send(&self.call("creating a folder", Method::POST, url, Replay::Safe))
            .await?;
        Ok(())
    }

    fn call(&self, operation: &'static str, method: Method, url: Url, replay: Replay) -> Call {
        Call {
            operation,
            method,
            url,
            payload: Payload::Empty,
            replay,
            timeout: self.request_timeout,
        }
    }

    /// `{api_url}/a/b`, each segment percent-encoded (ids come from outside).
    fn api(&self, segments: &[&str]) -> Result<Url, DaytonaError> {
        url_with(&self.api_url, segments, &[])
    }

    fn tool(
        &self,
        toolbox: &Toolbox,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Url, DaytonaError> {
        let mut all = vec![toolbox.sandbox_id.as_str()];
        all.extend_from_slice(segments);
        url_with(&toolbox.proxy_url, &all, query)
    }

    async fn sandbox_json(&self, call: Call) -> Result<SandboxInfo, DaytonaError> {
        let operation = call.operation;
        self.json::<RawSandbox>(call).await?.into_info(operation)
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, call: Call) -> Result<T, DaytonaError> {
        let operation = call.operation;
        let response = self.send(&call).await?;
        let bytes = read_limited(response, MAX_JSON_BODY)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => DaytonaError::TooLarge {
                    operation,
                    limit: MAX_JSON_BODY,
                },
                BodyError::Read(detail) => DaytonaError::Decode { operation, detail },
            })?;
        serde_json::from_slice(&bytes).map_err(|e| DaytonaError::Decode {
            operation,
            detail: e.to_string(),
        })
    }

    /// Sends until a successful status, retrying per the call's replay rule.
    async fn send(&self, call: &Call) -> Result<reqwest::Response, DaytonaError> {
        let mut attempt = 1;
        loop {
            let failure = match self.send_once(call).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            if !failure.retryable {
                return Err(failure.error);
            }
            if attempt >= self.max_attempts {
                return Err(DaytonaError::RetriesExhausted {
                    operation: call.operation,
                    attempts: attempt,
                    last: Box::new(failure.error),
                });
            }
            let wait = self
                .backoff
                .delay(attempt, failure.retry_after, fastrand::f64());
            tracing::warn!(
                operation = call.operation,
                attempt,
                max_attempts = self.max_attempts,
                wait_ms = wait.as_millis() as u64,
                error = %failure.error,
                "Daytona request failed, retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn send_once(&self, call: &Call) -> Result<reqwest::Response, Failure> {
        let request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .timeout(call.timeout);
        let request = match &call.payload {
            Payload::Empty => request,
            Payload::Json(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone()),
            Payload::File { name, bytes } => {
                let part = reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone());
                request.multipart(reqwest::multipart::Form::new().part("file", part))
            }
        };
        let response = request.send().await.map_err(|e| self.transport(call, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let text = read_limited(response, MAX_ERROR_BODY)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // The body of an error may be cut or unreadable; the status still says what happened.
        let (code, message) = parse_error_body(status, &text);
        Err(Failure {
            error: DaytonaError::Api {
                operation: call.operation,
                status: status.as_u16(),
                code: code.map(|c| self.redact(c)),
                message: self.redact(message),
            },
            retry_after,
            retryable: status_is_retryable(status, call.replay),
        })
    }

    fn transport(&self, call: &Call, e: reqwest::Error) -> Failure {
        // A refused connection never reached Daytona; a timeout or reset may have.
        let unprocessed = e.is_connect();
        let timed_out = e.is_timeout();
        let e = e.without_url();
        let detail = if timed_out {
            format!(
                "no response within {:?} ({})",
                call.timeout,
                error_chain(&e)
            )
        } else {
            error_chain(&e)
        };
        let mut endpoint = call.url.clone();
        endpoint.set_query(None);
        Failure {
            error: DaytonaError::Transport {
                operation: call.operation,
                endpoint: endpoint.to_string(),
                detail,
            },
            retry_after: None,
            retryable: !e.is_builder() && (unprocessed || call.replay == Replay::Safe),
        }
    }

    fn redact(&self, text: String) -> String {
        let key = self.api_key.expose().trim();
        if !key.is_empty() && text.contains(key) {
            return text.replace(key, "[redacted]");
        }
        text
    }
}

fn status_is_retryable(status: StatusCode, replay: Replay) -> bool {
    match replay {
        Replay::Safe => status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
        // A 500 may come after the command ran; 429 and 503 are refusals before any work.
        Replay::Unprocessed => matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ),
    }
}

fn not_found_as_gone(e: DaytonaError, id: &str) -> DaytonaError {
    match e {
        DaytonaError::Api {
            status: 404,
            message,
            ..
        } => DaytonaError::SandboxNotFound {
            id: id.to_owned(),
            message,
        },
        other => other,
    }
}

fn url_with(base: &str, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, DaytonaError> {
    let mut url = Url::parse(base)
        .map_err(|e| DaytonaError::Config(format!("'{base}' is not a URL: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| DaytonaError::Config(format!("'{base}' cannot be a base URL")))?
        .pop_if_empty()
        .extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

enum BodyError {
    TooLarge,
    Read(String),
}

/// The body, up to `limit` bytes; refused past it without buffering the rest.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(error_chain(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `(code, message)` from Daytona's error JSON, or the raw text when it is not JSON.
fn parse_error_body(status: StatusCode, text: &str) -> (Option<String>, String) {
    let fallback = || {
        let reason = status.canonical_reason().unwrap_or("error").to_owned();
        if text.trim().is_empty() {
            reason
        } else {
            cut(text.trim())
        }
    };
    let Ok(body) = serde_json::from_str::<ApiErrorBody>(text) else {
        return (None, fallback());
    };
    let message = match body.message {
        Some(serde_json::Value::String(s)) => cut(&s),
        Some(serde_json::Value::Array(items)) => cut(&items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("; ")),
        Some(other) => cut(&other.to_string()),
        None => body.error.map_or_else(fallback, |e| cut(&e)),
    };
    (body.code, message)
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
