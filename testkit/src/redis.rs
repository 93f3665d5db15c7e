//! A real `redis-server` child process for tests: ephemeral loopback port, no persistence
//! (`--save '' --appendonly no`), its own temporary directory, killed on drop. It can be killed
//! and started again on the same port to test reconnection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::free_addr;

const BINARY: &str = "redis-server";

pub struct RedisServer {
    addr: SocketAddr,
    dir: TempDir,
    child: Option<Child>,
    /// Certificate, key and CA files: the server speaks TLS only.
    tls: Option<[PathBuf; 3]>,
    /// Times the server was started (its log gains a ready line each time).
    starts: usize,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers PING.
    /// Panics with an install hint when the binary is missing: these tests must not be skipped.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("redis tempdir");
        let mut server = Self {
            addr: free_addr(),
            dir,
            child: None,
            tls: None,
            starts: 0,
        };
        server.spawn();
        server
    }

    /// As [`RedisServer::start`], speaking TLS only (no plaintext port), with the server
    /// certificate of `pki` (valid for 127.0.0.1 and localhost); clients need no certificate.
    pub fn start_tls(pki: &crate::pki::TestPki) -> Self {
        let dir = tempfile::tempdir().expect("redis tempdir");
        let mut server = Self {
            addr: free_addr(),
            dir,
            child: None,
            tls: Some([pki.server_cert(), pki.server_key(), pki.ca()]),
            starts: 0,
        };
        server.spawn();
        server
    }

    /// `rediss://127.0.0.1:PORT/` (for a server from [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!("rediss://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("redis log file");
        let log_err = log.try_clone().expect("clone redis log");
        let mut command = Command::new(BINARY);
        match &self.tls {
            None => command.arg("--port").arg(self.addr.port().to_string()),
            Some([cert, key, ca]) => command
                .arg("--port")
                .arg("0")
                .arg("--tls-port")
                .arg(self.addr.port().to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .arg("--tls-auth-clients")
                .arg("no"),
        };
        let child = command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{BINARY}` ({e}): the Redis tests need a real redis-server on \
                     PATH; `scripts/test` installs it (apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready();
    }

    /// Whether the server answers: PING in plaintext, or for TLS its log saying it is ready
    /// and the port accepting connections (a handshake is the client's business).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        if self.tls.is_some() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            return log.matches("Ready to accept connections").count() >= self.starts;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.answers() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!("redis-server exited early ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} not ready after 10s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (with an empty dataset).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
