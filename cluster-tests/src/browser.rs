//! Headless Chromium (Debian's `chromium`) driven from its command line: the DOM of a page
//! after its scripts ran (`--dump-dom`), and screenshots (`--screenshot`). Every run gets a
//! fresh profile (`--user-data-dir` in a temporary directory) and a deadline. For timings, a
//! browser kept running is asked over the DevTools protocol (a minimal WebSocket client, text
//! frames only) to load a page and report its Navigation Timing entry.
//!
//! Used by the web page's browser test and its benchmark (`bench_ui`).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::tools::{self, Output};

/// How long one Chromium run may take.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// Window size of screenshots.
pub const WINDOW: (u32, u32) = (1280, 900);

/// Where screenshots are also copied for a person to look at, when writable.
pub const SHARED_SCREENSHOTS: &str = "/tmp/ipcr-ui-screenshots";

/// The Chromium binary.
pub struct Browser {
    bin: PathBuf,
}

/// Flags of every headless run.
const HEADLESS: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
];

/// A page load as the browser measured it (Navigation Timing, ms from the navigation's start).
#[derive(Clone, Debug)]
pub struct Timing {
    /// The first byte of the response.
    pub response_start: f64,
    /// The last byte of the response.
    pub response_end: f64,
    /// The DOM is parsed and the page's script ran (`DOMContentLoaded` handled).
    pub dom_content_loaded: f64,
    /// The `load` event handled: the page is loaded.
    pub load: f64,
    /// The first paint with content (`first-contentful-paint`), when reported.
    pub first_contentful_paint: Option<f64>,
    /// Rows of the page's tables with a `data-name`, as the DOM holds them.
    pub rows: u64,
}

impl Browser {
    /// Chromium from `PATH`, or `None` after [`tools::require_tool`] skipped the test (it fails
    /// under `CI=true`).
    pub fn require() -> Option<Browser> {
        tools::require_tool("chromium").map(|bin| Browser { bin })
    }

    /// Run Chromium headless on `url` with `args`, in a fresh profile.
    fn run(&self, url: &str, args: &[String]) -> Output {
        let profile = tempfile::Builder::new()
            .prefix("ipcr-chromium-")
            .tempdir()
            .expect("a profile directory");
        let mut cmd = Command::new(&self.bin);
        cmd.args(HEADLESS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            // Its crash reporter and desktop integration want a home they can write.
            .env("HOME", profile.path());
        tools::run(&mut cmd, TIMEOUT)
    }

    /// The DOM of `url` once loaded (scripts included), as HTML.
    pub fn dump_dom(&self, url: &str) -> String {
        let out = self.run(url, &["--dump-dom".to_string()]);
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{}",
            out.describe()
        );
        out.stdout_text()
    }

    /// How long a `--dump-dom` of `url` takes, start of the browser to its exit; and the DOM.
    pub fn timed_dump_dom(&self, url: &str) -> (Duration, String) {
        let started = Instant::now();
        let dom = self.dump_dom(url);
        (started.elapsed(), dom)
    }

    /// A screenshot of `url` in a [`WINDOW`]-sized window, written to `path` (PNG).
    pub fn screenshot(&self, url: &str, path: &Path) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory");
        }
        let _ = std::fs::remove_file(path);
        let out = self.run(
            url,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            ],
        );
        let written = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        assert!(
            out.status.success() && written > 0,
            "no screenshot of {url} at {}: {}",
            path.display(),
            out.describe()
        );
    }
}

impl Browser {
    /// Load `url` `runs` times in one browser (the first load is cold, the others find its
    /// connections and caches warm, as a person clicking around does), each measured by the
    /// browser itself.
    pub fn timings(&self, url: &str, runs: usize) -> Vec<Timing> {
        let mut devtools = DevTools::start(&self.bin);
        (0..runs).map(|_| devtools.load(url)).collect()
    }
}

/// A headless Chromium with its DevTools endpoint open, and a WebSocket to its page.
struct DevTools {
    child: Child,
    _profile: tempfile::TempDir,
    socket: TcpStream,
    next_id: u64,
}

impl Drop for DevTools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevTools {
    fn start(bin: &Path) -> DevTools {
        let profile = tempfile::Builder::new()
            .prefix("ipcr-chromium-")
            .tempdir()
            .expect("a profile directory");
        let port = crate::node::free_port();
        let child = Command::new(bin)
            .args(HEADLESS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--remote-debugging-port={port}"))
            .arg("--window-size=1280,900")
            .arg("about:blank")
            .env("HOME", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        // Its page target, once the endpoint answers.
        let deadline = Instant::now() + TIMEOUT;
        let page = loop {
            let targets = reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/list"))
                .and_then(|r| r.json::<Vec<Value>>());
            if let Ok(targets) = targets
                && let Some(url) = targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break url.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "chromium's DevTools endpoint never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let path = page
            .split_once(&format!("127.0.0.1:{port}"))
            .map(|(_, p)| p.to_string())
            .expect("a ws://127.0.0.1 DevTools URL");
        let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connecting to DevTools");
        socket.set_read_timeout(Some(TIMEOUT)).expect("a read timeout");
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: aXBjci11aS1iZW5jaA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("the WebSocket handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).expect("the handshake's answer");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut devtools = DevTools {
            child,
            _profile: profile,
            socket,
            next_id: 0,
        };
        devtools.call("Page.enable", json!({}));
        devtools
    }

    /// Send a text frame (masked, as a client must).
    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37u8, 0x5a, 0x11, 0xc3];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).expect("a DevTools message");
    }

    /// The next whole text message (fragments joined; pings and other control frames skipped).
    fn receive(&mut self) -> Value {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).expect("a DevTools frame");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.socket.read_exact(&mut b).expect("a frame length");
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.socket.read_exact(&mut b).expect("a frame length");
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.socket.read_exact(&mut payload).expect("a frame's payload");
            let opcode = head[0] & 0x0f;
            assert_ne!(opcode, 0x8, "DevTools closed the connection");
            if opcode == 0x1 || opcode == 0x0 {
                message.extend_from_slice(&payload);
                if head[0] & 0x80 != 0 {
                    return serde_json::from_slice(&message).expect("a DevTools message is JSON");
                }
            }
        }
    }

    /// Call `method` and wait for its answer (events on the way are dropped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({ "id": id, "method": method, "params": params }).to_string());
        loop {
            let msg = self.receive();
            if msg["id"] == id {
                assert!(msg.get("error").is_none(), "{method}: {msg}");
                return msg["result"].clone();
            }
        }
    }

    /// Navigate to `url`, wait for its `load` event, and read the browser's timings.
    fn load(&mut self, url: &str) -> Timing {
        self.next_id += 1;
        let id = self.next_id;
        let navigate = json!({ "id": id, "method": "Page.navigate", "params": { "url": url } });
        self.send(&navigate.to_string());
        let (mut answered, mut loaded) = (false, false);
        while !(answered && loaded) {
            let msg = self.receive();
            answered |= msg["id"] == id;
            loaded |= msg["method"] == "Page.loadEventFired";
        }
        // The `load` handler's end is recorded once it returns: read after it.
        let expression = "new Promise(r => setTimeout(() => r(JSON.stringify({ \
            nav: performance.getEntriesByType('navigation')[0], \
            paint: performance.getEntriesByName('first-contentful-paint')[0] || null, \
            rows: document.querySelectorAll('tr[data-name]').length })), 0))";
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        let v: Value = serde_json::from_str(result["result"]["value"].as_str().expect("timings"))
            .expect("timings are JSON");
        let n = |k: &str| v["nav"][k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
        Timing {
            response_start: n("responseStart"),
            response_end: n("responseEnd"),
            dom_content_loaded: n("domContentLoadedEventEnd"),
            load: n("loadEventEnd"),
            first_contentful_paint: v["paint"]["startTime"].as_f64(),
            rows: v["rows"].as_u64().unwrap_or(0),
        }
    }
}

/// Copy the PNGs of `dir` to [`SHARED_SCREENSHOTS`] when that can be written; answers where they
/// went (`None` when it could not be written).
pub fn share_screenshots(dir: &Path) -> Option<PathBuf> {
    let shared = PathBuf::from(SHARED_SCREENSHOTS);
    std::fs::create_dir_all(&shared).ok()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "png") {
            std::fs::copy(&path, shared.join(entry.file_name())).ok()?;
        }
    }
    Some(shared)
}
