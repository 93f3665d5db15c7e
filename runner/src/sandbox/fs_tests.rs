//! File operations against real directories, escape attempts included.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

/// A sandbox root in a temp dir, one open session, and a directory outside the root that
/// escapes would reach.
struct Fixture {
    _tmp: tempfile::TempDir,
    sandbox: Sandbox,
    session: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical tempdir");
    let outside = base.join("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::write(outside.join("secret.txt"), b"top secret").expect("secret");
    let root = SandboxRoot::new(&base.join("root")).expect("root");
    let sandbox = root.open("s1").expect("session");
    let session = root.path().join("s1");
    Fixture {
        _tmp: tmp,
        sandbox,
        session,
        outside,
    }
}

fn assert_escape<T: std::fmt::Debug>(result: Result<T, SandboxError>, path: &str) {
    match result {
        Err(SandboxError::PathEscape { path: p }) => assert_eq!(p, path),
        other => panic!("{path}: expected PathEscape, got {other:?}"),
    }
}

#[tokio::test]
async fn write_then_read_round_trips_and_creates_parents() {
    let f = fixture();
    f.sandbox
        .write_file("a/b/c.txt", b"hello")
        .await
        .expect("write");
    assert_eq!(
        std::fs::read(f.session.join("a/b/c.txt")).expect("on disk"),
        b"hello"
    );
    assert_eq!(
        f.sandbox.read_file("a/b/c.txt").await.expect("read"),
        b"hello"
    );
    // Overwriting a longer file leaves nothing of the old contents behind.
    f.sandbox
        .write_file("a/b/c.txt", b"hi")
        .await
        .expect("overwrite");
    assert_eq!(f.sandbox.read_file("a/b/c.txt").await.expect("read"), b"hi");
}

#[tokio::test]
async fn lexical_escapes_are_refused_by_every_operation() {
    let f = fixture();
    for path in ["../x", "a/../../x", "/etc/passwd", "../outside/secret.txt"] {
        assert_escape(f.sandbox.read_file(path).await, path);
        assert_escape(f.sandbox.write_file(path, b"x").await, path);
        assert_escape(f.sandbox.list_dir(path).await, path);
    }
    assert!(!f.session.parent().expect("root").join("x").exists());
}

#[tokio::test]
async fn absolute_path_inside_the_session_is_accepted() {
    let f = fixture();
    let abs = f.session.join("inside.txt");
    let abs = abs.to_str().expect("utf-8 path");
    f.sandbox.write_file(abs, b"ok").await.expect("write");
    assert_eq!(
        f.sandbox.read_file("inside.txt").await.expect("read"),
        b"ok"
    );
    assert_eq!(f.sandbox.read_file(abs).await.expect("read abs"), b"ok");
}

#[tokio::test]
async fn symlink_to_a_file_outside_is_refused_for_read_and_write() {
    let f = fixture();
    let secret = f.outside.join("secret.txt");
    symlink(&secret, f.session.join("link")).expect("symlink");
    assert_escape(f.sandbox.read_file("link").await, "link");
    assert_escape(f.sandbox.write_file("link", b"pwned").await, "link");
    assert_eq!(std::fs::read(&secret).expect("secret"), b"top secret");
}

#[tokio::test]
async fn relative_symlink_climbing_out_is_refused() {
    let f = fixture();
    symlink("../../outside/secret.txt", f.session.join("rel")).expect("symlink");
    assert_escape(f.sandbox.read_file("rel").await, "rel");
}

#[tokio::test]
async fn symlinked_parent_directory_outside_is_refused() {
    let f = fixture();
    symlink(&f.outside, f.session.join("out")).expect("symlink");
    assert_escape(
        f.sandbox.read_file("out/secret.txt").await,
        "out/secret.txt",
    );
    assert_escape(
        f.sandbox.write_file("out/new.txt", b"x").await,
        "out/new.txt",
    );
    assert_escape(
        f.sandbox.write_file("out/sub/new.txt", b"x").await,
        "out/sub/new.txt",
    );
    assert_escape(f.sandbox.list_dir("out").await, "out");
    assert!(!f.outside.join("new.txt").exists());
    assert!(!f.outside.join("sub").exists());
}

#[tokio::test]
async fn symlink_created_by_a_command_does_not_lead_outside() {
    let f = fixture();
    let env = BTreeMap::new();
    let cancel = CancellationToken::new();
    let out = f
        .sandbox
        .run_command(CommandRequest {
            network: crate::sandbox::Network::None,
            command: "ln -s / escape && ln -s /etc etc",
            timeout: Duration::from_secs(10),
            env: &env,
            cancel: &cancel,
            output_limit: 4096,
        })
        .await
        .expect("run");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(
        f.session
            .join("escape")
            .symlink_metadata()
            .expect("link")
            .is_symlink()
    );
    for path in ["escape/etc/hostname", "escape/etc/passwd", "etc/passwd"] {
        assert_escape(f.sandbox.read_file(path).await, path);
    }
    assert_escape(f.sandbox.list_dir("escape").await, "escape");
}

#[tokio::test]
async fn symlink_inside_the_session_is_followed() {
    let f = fixture();
    f.sandbox
        .write_file("real/data.txt", b"data")
        .await
        .expect("write");
    symlink("real", f.session.join("alias")).expect("symlink");
    assert_eq!(
        f.sandbox.read_file("alias/data.txt").await.expect("read"),
        b"data"
    );
    let listed = f.sandbox.list_dir(".").await.expect("list");
    let alias = listed
        .iter()
        .find(|e| e.name == "alias")
        .expect("alias listed");
    assert!(alias.is_dir, "a link to a directory lists as a directory");
}

#[tokio::test]
async fn list_dir_is_sorted_with_kinds_and_sizes() {
    let f = fixture();
    f.sandbox.write_file("b.txt", b"12345").await.expect("b");
    f.sandbox.write_file("a.txt", b"1").await.expect("a");
    f.sandbox.write_file("c/d.txt", b"").await.expect("c/d");
    let listed = f.sandbox.list_dir(".").await.expect("list");
    let names: Vec<_> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.txt", "b.txt", "c"]);
    assert_eq!(
        listed[1],
        DirEntry {
            name: "b.txt".into(),
            is_dir: false,
            size: 5
        }
    );
    assert!(listed[2].is_dir);
    let sub = f.sandbox.list_dir("c").await.expect("list c");
    assert_eq!(sub.len(), 1);
    assert_eq!(sub[0].name, "d.txt");
}

#[tokio::test]
async fn missing_files_directories_and_non_directories_are_reported() {
    let f = fixture();
    f.sandbox.write_file("f.txt", b"x").await.expect("write");
    std::fs::create_dir(f.session.join("dir")).expect("dir");
    assert!(matches!(
        f.sandbox.read_file("nope.txt").await,
        Err(SandboxError::NotFound { .. })
    ));
    assert!(matches!(
        f.sandbox.read_file("dir").await,
        Err(SandboxError::IsADirectory { .. })
    ));
    assert!(matches!(
        f.sandbox.write_file("dir", b"x").await,
        Err(SandboxError::IsADirectory { .. })
    ));
    assert!(matches!(
        f.sandbox.write_file(".", b"x").await,
        Err(SandboxError::IsADirectory { .. })
    ));
    assert!(matches!(
        f.sandbox.list_dir("f.txt").await,
        Err(SandboxError::NotADirectory { .. })
    ));
    assert!(matches!(
        f.sandbox.list_dir("nope").await,
        Err(SandboxError::NotFound { .. })
    ));
}

#[tokio::test]
async fn files_above_the_read_limit_are_refused() {
    let f = fixture();
    let big = std::fs::File::create(f.session.join("big.bin")).expect("create");
    big.set_len(MAX_READ_BYTES + 1).expect("sparse file");
    match f.sandbox.read_file("big.bin").await {
        Err(e @ SandboxError::FileTooLarge { .. }) => {
            assert!(e.to_string().contains("8388609 bytes"), "{e}");
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
    big.set_len(MAX_READ_BYTES).expect("shrink");
    let read = f.sandbox.read_file("big.bin").await.expect("at the limit");
    assert_eq!(read.len() as u64, MAX_READ_BYTES);
}

#[tokio::test]
async fn a_fifo_is_refused_without_hanging() {
    let f = fixture();
    nix::unistd::mkfifo(
        &f.session.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let read = tokio::time::timeout(Duration::from_secs(5), f.sandbox.read_file("pipe"))
        .await
        .expect("read of a FIFO must not block");
    assert!(
        matches!(read, Err(SandboxError::NotARegularFile { .. })),
        "{read:?}"
    );
    let write = tokio::time::timeout(Duration::from_secs(5), f.sandbox.write_file("pipe", b"x"))
        .await
        .expect("write to a FIFO must not block");
    assert!(write.is_err(), "{write:?}");
}

#[tokio::test]
async fn session_directory_that_is_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = SandboxRoot::new(&tmp.path().join("root")).expect("root");
    root.open("real").expect("real session");
    symlink(root.path().join("real"), root.path().join("alias")).expect("symlink");
    assert!(root.open("alias").is_err());
}

// ---- hard links ----

fn assert_hard_linked<T: std::fmt::Debug>(result: Result<T, SandboxError>, path: &str) {
    match result {
        Err(e @ SandboxError::HardLinked { .. }) => assert_eq!(
            e.to_string(),
            format!("'{path}' has 2 hard links, some outside this session; file tools refuse it")
        ),
        other => panic!("{path}: expected HardLinked, got {other:?}"),
    }
}

#[tokio::test]
async fn hard_link_to_a_file_outside_is_refused_for_read_and_write() {
    let f = fixture();
    // A file in another directory outside the sandbox root, linked into the session as a
    // command could (`ln ~/.bashrc x`).
    let elsewhere = tempfile::tempdir_in(&f.outside).expect("another tempdir");
    let secret = elsewhere.path().join("bashrc");
    std::fs::write(&secret, b"export SECRET=1").expect("outside file");
    std::fs::hard_link(&secret, f.session.join("innocent.txt")).expect("hard link");
    std::fs::create_dir(f.session.join("sub")).expect("sub");
    std::fs::hard_link(&secret, f.session.join("sub/deeper.txt")).expect("second link");

    // Two links inside, one outside: three links, two found.
    match f.sandbox.read_file("innocent.txt").await {
        Err(e @ SandboxError::HardLinked { links: 3, .. }) => {
            assert!(e.to_string().contains("some outside this session"), "{e}")
        }
        other => panic!("expected HardLinked, got {other:?}"),
    }
    std::fs::remove_file(f.session.join("sub/deeper.txt")).expect("unlink");
    assert_hard_linked(f.sandbox.read_file("innocent.txt").await, "innocent.txt");
    assert_hard_linked(
        f.sandbox.write_file("innocent.txt", b"pwned").await,
        "innocent.txt",
    );
    assert_eq!(std::fs::read(&secret).expect("outside"), b"export SECRET=1");
    // The link made by a command is refused the same way.
    let env = BTreeMap::new();
    let cancel = CancellationToken::new();
    let out = f
        .sandbox
        .run_command(CommandRequest {
            network: crate::sandbox::Network::None,
            command: &format!("ln {} cmd-link", f.outside.join("secret.txt").display()),
            timeout: Duration::from_secs(10),
            env: &env,
            cancel: &cancel,
            output_limit: 4096,
        })
        .await
        .expect("run");
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert_hard_linked(f.sandbox.read_file("cmd-link").await, "cmd-link");
    assert_eq!(
        std::fs::read(f.outside.join("secret.txt")).expect("secret"),
        b"top secret"
    );
}

#[tokio::test]
async fn hard_links_all_inside_the_session_are_allowed() {
    let f = fixture();
    f.sandbox
        .write_file("a.txt", b"shared")
        .await
        .expect("write");
    std::fs::create_dir_all(f.session.join("x/y")).expect("dirs");
    std::fs::hard_link(f.session.join("a.txt"), f.session.join("x/y/b.txt")).expect("link");
    // A symlink to the outside is not followed by the search, and does not count.
    symlink(&f.outside, f.session.join("out")).expect("symlink");
    assert_eq!(
        f.sandbox.read_file("x/y/b.txt").await.expect("read"),
        b"shared"
    );
    f.sandbox
        .write_file("a.txt", b"changed")
        .await
        .expect("write through a link inside");
    assert_eq!(
        std::fs::read(f.session.join("x/y/b.txt")).expect("other link"),
        b"changed"
    );
}

#[test]
fn the_link_search_is_bounded() {
    use super::filesystem::{LinkScan, ensure_links_inside, links_in_session};
    use cap_std::fs::MetadataExt as _;
    let f = fixture();
    for i in 0..5 {
        std::fs::write(f.session.join(format!("f{i}")), b"x").expect("filler");
    }
    std::fs::hard_link(f.session.join("f0"), f.session.join("f0-link")).expect("link");
    let dir = cap_std::fs::Dir::open_ambient_dir(&f.session, cap_std::ambient_authority())
        .expect("session dir");
    let meta = dir.metadata("f0").expect("meta");
    assert_eq!(
        links_in_session(&dir, meta.dev(), meta.ino(), 2, 100),
        LinkScan::Found(2)
    );
    // Six entries; a search allowed three cannot prove where the links are.
    assert_eq!(
        links_in_session(&dir, meta.dev(), meta.ino(), 3, 3),
        LinkScan::TooManyEntries
    );
    match ensure_links_inside(&dir, &meta, "f0", 3) {
        Err(e @ SandboxError::LinkScanTooLarge { .. }) => assert_eq!(
            e.to_string(),
            "'f0' has 2 hard links, and the session holds more than 3 entries to look for \
             them in; file tools refuse it"
        ),
        other => panic!("expected LinkScanTooLarge, got {other:?}"),
    }
    ensure_links_inside(&dir, &meta, "f0", 100).expect("both links inside");
}

// ---- directory modes ----

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_root_and_session_directories_are_created_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_path = tmp.path().join("made/by/runner");
    let root = SandboxRoot::new(&root_path).expect("root");
    assert_eq!(mode(&root_path), 0o700);
    assert_eq!(
        mode(&tmp.path().join("made")),
        0o700,
        "parents it creates too"
    );
    root.open("s1").expect("session");
    assert_eq!(mode(&root_path.join("s1")), 0o700);
}

#[test]
fn an_existing_root_keeps_its_mode_and_old_sessions_are_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_path = tmp.path().join("mine");
    std::fs::create_dir(&root_path).expect("root");
    std::fs::set_permissions(&root_path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let old = root_path.join("old-session");
    std::fs::create_dir(&old).expect("old session");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = SandboxRoot::new(&root_path).expect("root");
    assert_eq!(mode(&root_path), 0o755, "the user's root is left alone");
    root.open("old-session").expect("session");
    assert_eq!(mode(&old), 0o700);
}

// ---- names as printed ----

#[tokio::test]
async fn names_are_listed_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let f = fixture();
    let names: [&[u8]; 5] = [
        b"a\nsecret.txt (12 bytes)",
        b"\x1b[2Jclear",
        b"bad\xffbyte",
        b"back\\slash",
        b"tab\there",
    ];
    for name in names {
        std::fs::write(f.session.join(std::ffi::OsStr::from_bytes(name)), b"1").expect("file");
    }
    let listed = f.sandbox.list_dir(".").await.expect("list");
    let mut shown: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    shown.sort_unstable();
    assert_eq!(
        shown,
        [
            "\\x1b[2Jclear",
            "a\\nsecret.txt (12 bytes)",
            "back\\\\slash",
            "bad\\xffbyte",
            "tab\\there",
        ]
    );
}
