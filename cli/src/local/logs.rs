//! Log files per component under `<data-dir>/logs`: rotated when a new supervisor starts and
//! when a component's log grows past a size, keeping a few old ones; and `stigmer local logs`
//! to read and follow them.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{LocalError, Paths};
use crate::args::{Component, LogsArgs};

/// Old logs kept next to the current one: `runner.log.1` (newest) to `runner.log.3`.
pub const KEEP: u32 = 3;

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Shifts `log` to `log.1`, `log.1` to `log.2`... dropping the oldest. A missing file is
/// nothing to rotate.
pub fn rotate(path: &Path, keep: u32) -> Result<(), LocalError> {
    if keep == 0 {
        return std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| LocalError::io(path, e));
    }
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            let to = numbered(path, n + 1);
            std::fs::rename(&from, &to).map_err(|e| LocalError::io(&from, e))?;
        }
    }
    if path.exists() {
        std::fs::rename(path, numbered(path, 1)).map_err(|e| LocalError::io(path, e))?;
    }
    Ok(())
}

pub fn open_append(path: &Path) -> Result<File, LocalError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LocalError::io(path, e))
}

/// A log file that rotates itself once it passes `max_bytes`. Cloned handles share one file,
/// so a child's stdout and stderr interleave by whole lines.
#[derive(Clone)]
pub struct RotatingLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, LocalError> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_path_buf(),
                file,
                size,
                max_bytes,
            })),
        })
    }

    /// Appends one line (which should end with a newline). A log that cannot be written must
    /// not take the platform down, so write errors are dropped.
    pub fn write_line(&self, line: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.size > 0 && inner.size + line.len() as u64 > inner.max_bytes {
            let path = inner.path.clone();
            if let Ok(file) = rotate(&path, KEEP).and_then(|()| open_append(&path)) {
                inner.file = file;
                inner.size = 0;
            }
        }
        if inner.file.write_all(line).is_ok() {
            inner.size += line.len() as u64;
        }
    }
}

/// `stigmer local logs`.
pub async fn run(paths: &Paths, args: LogsArgs) -> Result<u8, LocalError> {
    let components: Vec<Component> = match args.component {
        Some(c) => vec![c],
        None => Component::ALL.to_vec(),
    };
    let several = components.len() > 1;
    let mut followers = Vec::new();
    for c in &components {
        let path = paths.log(*c);
        if several {
            println!("==> {} <==", path.display());
        }
        let (text, end) = tail(&path, args.lines).unwrap_or_default();
        print!("{text}");
        if several {
            println!();
        }
        followers.push(Follower {
            label: several.then(|| format!("[{}] ", c.name())),
            path,
            offset: end,
            inode: None,
            partial: Vec::new(),
        });
    }
    if !components.iter().any(|c| paths.log(*c).exists()) {
        eprintln!(
            "no logs yet under {}; start the platform with `stigmer local start`",
            paths.logs().display()
        );
        if !args.follow {
            return Ok(1);
        }
    }
    if !args.follow {
        return Ok(0);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for f in &mut followers {
                    f.poll();
                }
                let _ = std::io::stdout().flush();
            }
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

/// The last `lines` lines of a log, or nothing when it cannot be read: for error messages.
pub fn last_lines(path: &Path, lines: usize) -> String {
    tail(path, lines).map(|(text, _)| text).unwrap_or_default()
}

/// The last `lines` lines of a file (reading at most its last MiB), and its length.
fn tail(path: &Path, lines: usize) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(1024 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.split_inclusive('\n').collect();
    let from = all.len().saturating_sub(lines);
    Ok((all[from..].concat(), start + buf.len() as u64))
}

/// Follows one log across rotations: a new inode or a shorter file means it was rotated and
/// is read again from its start.
struct Follower {
    label: Option<String>,
    path: PathBuf,
    offset: u64,
    inode: Option<u64>,
    partial: Vec<u8>,
}

impl Follower {
    fn poll(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        let Ok(meta) = f.metadata() else { return };
        let rotated = self.inode.is_some_and(|i| i != meta.ino()) || meta.len() < self.offset;
        self.inode = Some(meta.ino());
        if rotated {
            self.offset = 0;
        }
        if meta.len() == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        // Whole lines only, so that labels of two components never split a line.
        let Some(last_newline) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        let text = String::from_utf8_lossy(&complete);
        let mut out = std::io::stdout().lock();
        for line in text.split_inclusive('\n') {
            let _ = write!(out, "{}{line}", self.label.as_deref().unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_a_bounded_number_of_old_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("runner.log");
        for i in 0..5 {
            std::fs::write(&log, format!("run {i}\n")).expect("write");
            rotate(&log, KEEP).expect("rotate");
        }
        assert!(!log.exists());
        let read = |n| std::fs::read_to_string(numbered(&log, n)).expect("old log");
        assert_eq!(read(1), "run 4\n");
        assert_eq!(read(3), "run 2\n");
        assert!(!numbered(&log, 4).exists());
    }

    #[test]
    fn a_log_rotates_itself_past_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.log");
        let log = RotatingLog::open(&path, 20).expect("open");
        let copy = log.clone();
        log.write_line(b"0123456789\n");
        copy.write_line(b"abcdefghij\n");
        log.write_line(b"ABCDEFGHIJ\n");
        assert_eq!(std::fs::read_to_string(&path).expect("log"), "ABCDEFGHIJ\n");
        assert_eq!(
            std::fs::read_to_string(numbered(&path, 1)).expect("log.1"),
            "abcdefghij\n"
        );
        assert_eq!(
            std::fs::read_to_string(numbered(&path, 2)).expect("log.2"),
            "0123456789\n"
        );
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        let (text, end) = tail(&path, 2).expect("tail");
        assert_eq!(text, "c\nd\n");
        assert_eq!(end, 8);
    }

    #[test]
    fn a_follower_reads_new_lines_and_survives_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runner.log");
        std::fs::write(&path, "old\n").expect("write");
        let mut f = Follower {
            label: None,
            path: path.clone(),
            offset: 4,
            inode: None,
            partial: Vec::new(),
        };
        f.poll();
        assert_eq!(f.offset, 4);
        std::fs::write(&path, "old\nnew\npart").expect("write");
        f.poll();
        assert_eq!(f.offset, 12);
        assert_eq!(f.partial, b"part");
        rotate(&path, KEEP).expect("rotate");
        std::fs::write(&path, "fresh\n").expect("write");
        f.poll();
        assert_eq!(f.offset, 6, "re-read from the start after rotation");
    }
}
