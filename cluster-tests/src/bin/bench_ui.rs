//! `bench_ui`: how long the web page's repository list takes for a registry of 1,000
//! repositories (issue 13: "the page loads in under 200 ms"). Not a test: it prints a table.
//!
//! ```console
//! $ cargo build --release -p ipcr-node -p cluster-tests --bin ipcr-node --bin bench_ui
//! $ ./target/release/bench_ui [--repos 1000] [--runs 20] [--browser-runs 5]
//! ```
//!
//! One node (the `ipcr-node` next to this binary, or `$IPCR_NODE_BIN`; default settings) is
//! loaded through its API by 8 threads: repository `bench/r<i>` gets a config and a layer
//! (monolithic `POST ?digest=` uploads) and 1 to 3 tags (`i % 3 + 1`), each its own manifest.
//! Then:
//! - `GET /` with `curl` (`%{time_total}`, loopback, a new connection each time): `--runs`
//!   times after one warm-up, median and max; the same for `/?q=` matching a tenth of the
//!   repositories and for one repository's tag page;
//! - headless Chromium (a fresh profile): `/` loaded `--browser-runs` + 1 times in one browser
//!   over the DevTools protocol, each load's Navigation Timing (response, `DOMContentLoaded`,
//!   first contentful paint, `load`) as the browser measured it; the first load (cold browser)
//!   apart, the median and max of the others; and one whole `--dump-dom` run for scale.
//!
//! A screenshot of the loaded page goes to `/tmp/ipcr-ui-screenshots/12-bench-repositories.png`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::bench::{curl, median};
use cluster_tests::browser::{self, Browser};
use cluster_tests::oci::{CONFIG, LAYER_TAR, MANIFEST};
use cluster_tests::{Node, sha256_digest, tools};
use reqwest::blocking::Client;
use serde_json::json;

/// Requests in flight while loading.
const THREADS: usize = 8;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `POST /v2/<repo>/blobs/uploads/?digest=` with the bytes: a monolithic upload.
fn push_blob(http: &Client, base: &str, repo: &str, bytes: &[u8]) -> Result<String> {
    let digest = sha256_digest(bytes);
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()?;
    if r.status().as_u16() != 201 {
        bail!("blob push to {repo}: {}", r.status());
    }
    Ok(digest)
}

/// Repository `i`: a config, a layer, and `i % 3 + 1` tags.
fn load_repo(http: &Client, base: &str, i: usize) -> Result<usize> {
    let repo = format!("bench/r{i}");
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"n":{i}}}"#
    );
    let layer = format!("layer of repository {i}: {}", "x".repeat(i % 512)).into_bytes();
    let config_digest = push_blob(http, base, &repo, config.as_bytes())?;
    let layer_digest = push_blob(http, base, &repo, &layer)?;
    let tags = i % 3 + 1;
    for t in 0..tags {
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": { "mediaType": CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": LAYER_TAR, "digest": layer_digest, "size": layer.len() }],
            "annotations": { "org.opencontainers.image.version": format!("1.{t}") },
        }))?;
        let r = http
            .put(format!("{base}/v2/{repo}/manifests/v1.{t}"))
            .header("Content-Type", MANIFEST)
            .body(manifest)
            .send()?;
        if r.status().as_u16() != 201 {
            bail!("manifest push to {repo}: {}", r.status());
        }
    }
    Ok(tags)
}

/// `--runs` timed `curl` GETs of `url` after a warm-up: (median, max) in ms.
fn time_get(url: &str, runs: usize) -> Result<(f64, f64)> {
    let (status, _, _) = curl(&[], url)?;
    if status != 200 {
        bail!("GET {url}: {status}");
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (status, secs, _) = curl(&[], url)?;
        if status != 200 {
            bail!("GET {url}: {status}");
        }
        times.push(secs * 1000.0);
    }
    Ok((median(&times), times.iter().copied().fold(0.0, f64::max)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let repos = arg("--repos", 1000);
    let runs = arg("--runs", 20).max(1);
    let browser_runs = arg("--browser-runs", 5).max(1);
    if tools::find_on_path("curl").is_none() {
        bail!("curl is needed (apt-get install curl)");
    }
    let browser = Browser::require().context("chromium is needed (apt-get install chromium)")?;

    let node = Node::start("bench-ui");
    let base = node.base_url();
    eprintln!("loading {repos} repositories into {base} ...");
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let tags = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let http = Client::builder().timeout(Duration::from_secs(60)).build()?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= repos {
                            return Ok(());
                        }
                        tags.fetch_add(load_repo(&http, &base, i)?, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a loader panicked"))??;
        }
        Ok(())
    })?;
    let tags = tags.load(Ordering::Relaxed);
    let load = started.elapsed();
    eprintln!(
        "loaded {repos} repositories and {tags} tags in {:.1} s",
        load.as_secs_f64()
    );

    let page = reqwest::blocking::get(format!("{base}/"))?.text()?;
    let rows = page.matches("data-name=").count();
    if rows != repos.min(1000) {
        bail!("the page lists {rows} repositories, not {repos}");
    }
    let (home_median, home_max) = time_get(&format!("{base}/"), runs)?;
    let (q_median, q_max) = time_get(&format!("{base}/?q=r1"), runs)?;
    let (tags_median, tags_max) = time_get(&format!("{base}/ui/repo/bench/r2"), runs)?;

    // The first load in a fresh browser is cold; the median is over the others.
    let timings = browser.timings(&format!("{base}/"), browser_runs + 1);
    if let Some(t) = timings.iter().find(|t| t.rows as usize != rows) {
        bail!("Chromium's DOM holds {} rows, not {rows}", t.rows);
    }
    let (cold, warm) = timings.split_first().context("no load")?;
    let col = |f: &dyn Fn(&browser::Timing) -> f64| {
        let v: Vec<f64> = warm.iter().map(f).collect();
        (f(cold), median(&v), v.iter().copied().fold(0.0, f64::max))
    };
    let response = col(&|t| t.response_end);
    let dcl = col(&|t| t.dom_content_loaded);
    let loaded = col(&|t| t.load);
    let (dump_ms, dom) = browser.timed_dump_dom(&format!("{base}/"));
    if dom.matches("data-name=").count() != rows {
        bail!("Chromium's --dump-dom does not hold the {rows} rows");
    }
    let shot = std::path::Path::new(browser::SHARED_SCREENSHOTS).join("12-bench-repositories.png");
    browser.screenshot(&format!("{base}/"), &shot);

    println!("## Web page, {repos} repositories and {tags} tags (one node, release build)");
    println!();
    println!("| what | median | max |");
    println!("|---|---:|---:|");
    println!(
        "| `GET /` ({} KiB of HTML), curl `time_total`, {runs} runs | {home_median:.1} ms | {home_max:.1} ms |",
        page.len() / 1024
    );
    println!("| `GET /?q=r1` (server-side filter), {runs} runs | {q_median:.1} ms | {q_max:.1} ms |");
    println!("| `GET /ui/repo/bench/r2` (3 tags), {runs} runs | {tags_median:.1} ms | {tags_max:.1} ms |");
    println!();
    println!(
        "Chromium (headless, 1280×900) loading `/`, as Navigation Timing reports it, ms from the navigation's start:"
    );
    println!();
    println!("| milestone | first load (cold browser) | median of {browser_runs} more | max |");
    println!("|---|---:|---:|---:|");
    for (name, (first, med, max)) in [
        ("last byte of the response", response),
        ("DOM parsed, script ran (`DOMContentLoaded` end)", dcl),
        ("`load` event end", loaded),
    ] {
        println!("| {name} | {first:.0} ms | {med:.0} ms | {max:.0} ms |");
    }
    let paints: Vec<f64> = timings.iter().filter_map(|t| t.first_contentful_paint).collect();
    if !paints.is_empty() {
        println!(
            "| first contentful paint ({} loads reported one) | | {:.0} ms | |",
            paints.len(),
            median(&paints)
        );
    }
    println!();
    println!(
        "A whole `chromium --headless --dump-dom` run of `/` (browser start to exit): {:.0} ms.",
        ms(dump_ms)
    );
    println!();
    println!(
        "Loaded in {:.1} s ({:.0} requests/s). Screenshot: {}",
        load.as_secs_f64(),
        (repos * 2 + tags) as f64 / load.as_secs_f64(),
        shot.display()
    );
    Ok(())
}
