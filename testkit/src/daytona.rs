//! A Daytona contract server on loopback: the documented REST endpoints the runner's Daytona
//! client uses, with in-memory sandboxes and a real temporary directory per sandbox behind the
//! toolbox.
//!
//! It stands in for Daytona, which CI cannot reach. It follows the published wire format (JSON
//! shapes, asynchronous create and start, `{statusCode, message, code}` errors, 408 on command
//! timeout, bearer auth), but it is not Daytona: commands run on the host with `sh -c` in the
//! sandbox's directory (so they see host paths and host tools), sandbox paths `/x/y` map to
//! `<tempdir>/x/y`, and there is no isolation.
//!
//! Tests steer it with fault injection (the next N requests to a path answer an error), by
//! making sandboxes fail or vanish, and read back the recorded requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Commands without a timeout get this one, so that a test never hangs on a stuck command.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What an injected fault answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 with `Retry-After: <seconds>`.
    TooManyRequests { retry_after: String },
    /// This status with a Daytona-shaped error body.
    Status(u16),
    /// This status with exactly this JSON body.
    Body { status: u16, body: Value },
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
}

/// A sandbox as the server holds it, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxView {
    pub id: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub snapshot: Option<String>,
}

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct DaytonaOptions {
    pub api_key: String,
    /// How long `creating` / `starting` last before `started`.
    pub start_delay: Duration,
    /// Sandboxes per page of `GET /sandbox`.
    pub page_size: usize,
}

impl DaytonaOptions {
    pub fn new(api_key: &str) -> Self {
        Self {
            api_key: api_key.to_owned(),
            start_delay: Duration::from_millis(50),
            page_size: 100,
        }
    }
}

struct FakeSandbox {
    id: String,
    state: String,
    error_reason: Option<String>,
    labels: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    snapshot: Option<String>,
    root: tempfile::TempDir,
}

impl FakeSandbox {
    fn json(&self, toolbox_url: &str) -> Value {
        json!({
            "id": self.id,
            "organizationId": "org-contract",
            "snapshot": self.snapshot,
            "user": "daytona",
            "env": self.env,
            "labels": self.labels,
            "public": false,
            "target": "local",
            "cpu": 1, "gpu": 0, "memory": 1, "disk": 3,
            "state": self.state,
            "errorReason": self.error_reason,
            "toolboxProxyUrl": toolbox_url,
        })
    }
}

struct Shared {
    options: DaytonaOptions,
    addr: SocketAddr,
    sandboxes: Mutex<BTreeMap<String, FakeSandbox>>,
    faults: Mutex<HashMap<(String, String), VecDeque<Fault>>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Reasons with which the next created sandboxes end in `error` instead of `started`.
    doomed: Mutex<VecDeque<String>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

impl Shared {
    fn toolbox_url(&self) -> String {
        format!("http://{}/toolbox", self.addr)
    }
}

/// The running server; it stops when dropped, and the sandboxes' directories go with it.
pub struct DaytonaServer {
    shared: Arc<Shared>,
}

impl DaytonaServer {
    /// Panics when no loopback port can be bound: this is test scaffolding.
    pub async fn start(options: DaytonaOptions) -> Self {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("Daytona contract server: cannot bind a loopback port: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("Daytona contract server: listener has no address: {e}"),
        };
        let shared = Arc::new(Shared {
            options,
            addr,
            sandboxes: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            doomed: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
        });
        let app = router(shared.clone());
        let stop = shared.shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            // A failing test server shows up as connection errors in the test itself.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await;
        });
        Self { shared }
    }

    /// `http://127.0.0.1:PORT/api`, what `DAYTONA_API_URL` would be.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.shared.addr)
    }

    /// The next `times` requests with this method and exact path answer `fault`.
    pub fn inject(&self, method: &str, path: &str, fault: Fault, times: usize) {
        let key = (method.to_ascii_uppercase(), path.to_owned());
        let mut faults = lock(&self.shared.faults);
        faults
            .entry(key)
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// The next created sandbox ends in `error` with this reason instead of starting.
    pub fn fail_next_create(&self, reason: &str) {
        lock(&self.shared.doomed).push_back(reason.to_owned());
    }

    /// Deletes the sandbox as if someone else (or auto-delete) had.
    pub fn delete_behind_our_back(&self, id: &str) -> bool {
        lock(&self.shared.sandboxes).remove(id).is_some()
    }

    /// Stops the sandbox at once, as auto-stop would.
    pub fn stop(&self, id: &str) {
        if let Some(sandbox) = lock(&self.shared.sandboxes).get_mut(id) {
            sandbox.state = "stopped".to_owned();
        }
    }

    pub fn sandboxes(&self) -> Vec<SandboxView> {
        lock(&self.shared.sandboxes)
            .values()
            .map(|s| SandboxView {
                id: s.id.clone(),
                state: s.state.clone(),
                labels: s.labels.clone(),
                snapshot: s.snapshot.clone(),
            })
            .collect()
    }

    /// The host directory standing for the sandbox's `/`.
    pub fn sandbox_root(&self, id: &str) -> Option<PathBuf> {
        lock(&self.shared.sandboxes)
            .get(id)
            .map(|s| s.root.path().to_path_buf())
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Requests received with this method and exact path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
            .count()
    }
}

impl Drop for DaytonaServer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/sandbox", post(create_sandbox).get(list_sandboxes))
        .route("/api/sandbox/{id}", get(get_sandbox).delete(delete_sandbox))
        .route("/api/sandbox/{id}/start", post(start_sandbox))
        .route("/api/sandbox/{id}/stop", post(stop_sandbox))
        .route("/toolbox/{id}/process/execute", post(execute))
        .route("/toolbox/{id}/files", get(list_files).delete(delete_file))
        .route("/toolbox/{id}/files/download", get(download))
        .route("/toolbox/{id}/files/upload", post(upload))
        .route("/toolbox/{id}/files/folder", post(create_folder))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(32 * 1024 * 1024))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Records the request, answers an injected fault if one is due, then checks the key.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    lock(&shared.requests).push(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: request.uri().query().map(str::to_owned),
    });
    let fault = lock(&shared.faults)
        .get_mut(&(method, path))
        .and_then(VecDeque::pop_front);
    if let Some(fault) = fault {
        return fault_response(fault);
    }
    let expected = format!("Bearer {}", shared.options.api_key);
    let authorised = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorised {
        return api_error(StatusCode::UNAUTHORIZED, "Invalid credentials");
    }
    next.run(request).await
}

fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::TooManyRequests { retry_after } => {
            let mut response = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlerException: Too Many Requests",
            );
            if let Ok(value) = HeaderValue::from_str(&retry_after) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Fault::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            api_error(status, "injected failure")
        }
        Fault::Body { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(body)).into_response()
        }
    }
}

/// An error answer, kept small until it becomes a response.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            message: message.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.status, &self.message)
    }
}

/// Daytona's error shape.
fn api_error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message,
        "error": status.canonical_reason().unwrap_or("Error"),
    });
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

async fn create_sandbox(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: CreateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    let root = match tempfile::tempdir() {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let id = format!("sbx-{}", shared.next_id.fetch_add(1, Ordering::SeqCst));
    let sandbox = FakeSandbox {
        id: id.clone(),
        state: "creating".to_owned(),
        error_reason: None,
        labels: body.labels,
        env: body.env,
        snapshot: body.snapshot,
        root,
    };
    let json = sandbox.json(&shared.toolbox_url());
    lock(&shared.sandboxes).insert(id.clone(), sandbox);
    let outcome = lock(&shared.doomed).pop_front();
    settle_later(&shared, id, outcome);
    (StatusCode::OK, axum::Json(json)).into_response()
}

/// After the start delay the sandbox is `started`, or `error` with the doomed reason.
fn settle_later(shared: &Arc<Shared>, id: String, failure: Option<String>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(shared.options.start_delay).await;
        if let Some(sandbox) = lock(&shared.sandboxes).get_mut(&id) {
            match failure {
                Some(reason) => {
                    sandbox.state = "error".to_owned();
                    sandbox.error_reason = Some(reason);
                }
                None => sandbox.state = "started".to_owned(),
            }
        }
    });
}

async fn get_sandbox(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    match lock(&shared.sandboxes).get(&id) {
        Some(s) => axum::Json(s.json(&shared.toolbox_url())).into_response(),
        None => sandbox_not_found(&id),
    }
}

fn sandbox_not_found(id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        &format!("Sandbox with ID or name {id} not found"),
    )
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    labels: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn list_sandboxes(State(shared): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    let wanted: BTreeMap<String, String> =
        match q.labels.as_deref().map(serde_json::from_str).transpose() {
            Ok(labels) => labels.unwrap_or_default(),
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("labels must be a JSON object: {e}"),
                );
            }
        };
    let start: usize = q
        .cursor
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let sandboxes = lock(&shared.sandboxes);
    let matching: Vec<Value> = sandboxes
        .values()
        .filter(|s| wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| s.json(&shared.toolbox_url()))
        .collect();
    let end = (start + shared.options.page_size.max(1)).min(matching.len());
    let items = matching.get(start..end).unwrap_or_default().to_vec();
    let next = (end < matching.len()).then(|| end.to_string());
    axum::Json(json!({ "items": items, "nextCursor": next })).into_response()
}

async fn start_sandbox(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let json = {
        let mut sandboxes = lock(&shared.sandboxes);
        let Some(sandbox) = sandboxes.get_mut(&id) else {
            return sandbox_not_found(&id);
        };
        if sandbox.state == "error" {
            return api_error(StatusCode::BAD_REQUEST, "Sandbox is in an errored state");
        }
        if sandbox.state != "started" {
            sandbox.state = "starting".to_owned();
        }
        sandbox.json(&shared.toolbox_url())
    };
    settle_later(&shared, id, None);
    axum::Json(json).into_response()
}

async fn stop_sandbox(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    let mut sandboxes = lock(&shared.sandboxes);
    let Some(sandbox) = sandboxes.get_mut(&id) else {
        return sandbox_not_found(&id);
    };
    sandbox.state = "stopped".to_owned();
    axum::Json(sandbox.json(&shared.toolbox_url())).into_response()
}

async fn delete_sandbox(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match lock(&shared.sandboxes).remove(&id) {
        Some(_) => StatusCode::OK.into_response(),
        None => sandbox_not_found(&id),
    }
}

/// The host directory of a started sandbox, or the error response to give.
fn started_root(shared: &Shared, id: &str) -> Result<PathBuf, ApiError> {
    let sandboxes = lock(&shared.sandboxes);
    let Some(sandbox) = sandboxes.get(id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            &format!("Sandbox with ID or name {id} not found"),
        ));
    };
    if sandbox.state != "started" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!("Sandbox {id} is not started (state {})", sandbox.state),
        ));
    }
    Ok(sandbox.root.path().to_path_buf())
}

/// Maps an absolute sandbox path beneath `root`; refuses relative paths and `..`.
fn host_path(root: &Path, raw: &str) -> Result<PathBuf, ApiError> {
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "path must be absolute",
        ));
    }
    let mut mapped = root.to_path_buf();
    for component in path.components() {
        match component {
            Component::Normal(name) => mapped.push(name),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "path must not contain '..'",
                ));
            }
        }
    }
    Ok(mapped)
}

fn resolve(shared: &Shared, id: &str, raw: Option<&str>) -> Result<PathBuf, ApiError> {
    let root = started_root(shared, id)?;
    let raw = raw.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "path is required"))?;
    host_path(&root, raw)
}

#[derive(Deserialize)]
struct ExecuteBody {
    command: String,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<u64>,
}

async fn execute(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let body: ExecuteBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    let root = match started_root(&shared, &id) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let cwd = match host_path(&root, body.cwd.as_deref().unwrap_or("/")) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let timeout = body
        .timeout
        .filter(|t| *t > 0)
        .map_or(DEFAULT_COMMAND_TIMEOUT, Duration::from_secs);
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        // Merges stderr into stdout in write order, as Daytona's `result` does.
        .arg(format!("exec 2>&1\n{}", body.command))
        .current_dir(&cwd)
        .envs(&body.envs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                &format!("cannot run the command: {e}"),
            );
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => axum::Json(json!({
            "exitCode": output.status.code().unwrap_or(-1),
            "result": String::from_utf8_lossy(&output.stdout),
        }))
        .into_response(),
        Ok(Err(e)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            api_error(StatusCode::REQUEST_TIMEOUT, "Command execution timeout")
        }
    }
}

#[derive(Deserialize)]
struct PathQuery {
    #[serde(default)]
    path: Option<String>,
}

async fn list_files(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let dir = match resolve(&shared, &id, q.path.as_deref()) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => return io_error(&e),
    };
    let mut listed = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        listed.push(json!({
            "name": entry.file_name().to_string_lossy(),
            "isDir": meta.is_dir(),
            "size": meta.len(),
            "modTime": "2025-01-01T00:00:00Z",
            "mode": if meta.is_dir() { "drwxr-xr-x" } else { "-rw-r--r--" },
        }));
    }
    axum::Json(Value::Array(listed)).into_response()
}

async fn download(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let file = match resolve(&shared, &id, q.path.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    match std::fs::read(&file) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => io_error(&e),
    }
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<PathQuery>,
    mut multipart: Multipart,
) -> Response {
    let file = match resolve(&shared, &id, q.path.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => {
                return api_error(StatusCode::BAD_REQUEST, "multipart field 'file' is missing");
            }
            Err(e) => return api_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        if field.name() != Some("file") {
            continue;
        }
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return api_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        // Like the real toolbox, the parent must exist; the client creates it first.
        return match std::fs::write(&file, &bytes) {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => io_error(&e),
        };
    }
}

async fn delete_file(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let target = match resolve(&shared, &id, q.path.as_deref()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let removed = if target.is_dir() {
        std::fs::remove_dir_all(&target)
    } else {
        std::fs::remove_file(&target)
    };
    match removed {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => io_error(&e),
    }
}

async fn create_folder(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let dir = match resolve(&shared, &id, q.path.as_deref()) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    match std::fs::create_dir_all(&dir) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => io_error(&e),
    }
}

fn io_error(e: &std::io::Error) -> Response {
    let status = match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    api_error(status, &e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
