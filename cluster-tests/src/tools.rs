//! External tools the tests drive (`skopeo`, `docker`, a static `busybox`) and running them
//! with a deadline.
//!
//! A missing tool skips the test with a message on a developer's machine, and fails it loudly
//! under `CI=true`, where `.ci/run` installs everything: CI must never pass by skipping.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether we run under CI (`CI=true`), where skipping is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Returns `available`. When it is false: panics under CI, else prints a skip line, and the
/// caller returns early.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    assert!(!in_ci(), "missing tool {what}: .ci/run installs it");
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip must be visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: missing tool {what} (.ci/run installs it; under CI=true this fails)"
    );
    false
}

/// `name` found on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The tool `name` from `PATH`, or `None` after [`require`] has skipped (or failed) the test.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = find_on_path(name);
    require(name, found.is_some()).then(|| found.expect("checked"))
}

/// A Docker CLI whose daemon answers `docker info`.
pub fn require_docker() -> Option<PathBuf> {
    let docker = require_tool("docker")?;
    let info = run(
        Command::new(&docker).args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(30),
    );
    let answers = info.status.success();
    if !answers {
        eprintln!("docker info: {}{}", info.stdout_text(), info.stderr_text());
    }
    require("docker (a Docker Engine answering `docker info`)", answers).then_some(docker)
}

/// A statically linked `busybox` (Debian's `busybox-static`), fit for a `FROM scratch` image.
pub fn require_static_busybox() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = ["/bin/busybox", "/usr/bin/busybox", "/usr/sbin/busybox"]
        .iter()
        .map(PathBuf::from)
        .collect();
    candidates.extend(find_on_path("busybox"));
    let found = candidates.into_iter().find(|p| is_static_elf(p));
    require(
        "busybox-static (a statically linked /bin/busybox)",
        found.is_some(),
    )
    .then(|| found.expect("checked"))
}

/// Whether `path` is a 64-bit little-endian ELF file without a program interpreter
/// (`PT_INTERP`), i.e. one that runs in an empty root filesystem.
pub fn is_static_elf(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        bytes
            .get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

/// What a finished command printed.
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Raw stdout.
    pub stdout: Vec<u8>,
    /// Raw stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Everything, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.stdout_text(),
            self.stderr_text()
        )
    }
}

/// Run `cmd` to completion, killing it and panicking after `timeout`. Output goes through
/// temporary files, so a chatty tool can never block on a full pipe.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    run_feeding(cmd, None, timeout)
}

/// [`run`] with `input` on the command's stdin (a password for `--password-stdin`).
pub fn run_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    run_feeding(cmd, Some(input), timeout)
}

fn run_feeding(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let command = format!("{cmd:?}");
    let out = tempfile::tempfile().expect("temporary file");
    let err = tempfile::tempfile().expect("temporary file");
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(out.try_clone().expect("file handle"))
        .stderr(err.try_clone().expect("file handle"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{command}`: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        // A tool that exits without reading its input is answered by its exit status below.
        let _ = stdin.write_all(input);
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling a child process") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{command}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read as _, Seek as _};
        let mut buf = Vec::new();
        f.rewind().expect("rewinding output");
        f.read_to_end(&mut buf).expect("reading output");
        buf
    };
    Output {
        command,
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// Run `cmd` and panic with everything it printed unless it succeeds.
pub fn must_run(cmd: &mut Command, timeout: Duration) -> Output {
    let output = run(cmd, timeout);
    assert!(output.status.success(), "{}", output.describe());
    output
}
