//! A real Prometheus server (Debian's `prometheus`) scraping nodes' debug listeners every
//! second and evaluating `deploy/alerts.yml`, read back through its HTTP query API; and
//! `promtool` checking what a node serves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::node::free_port;
use crate::process::Process;
use crate::tools::{self, require_tool};

/// How long a wait on the server's answers may take.
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// One series of an instant query: its labels and value.
#[derive(Clone, Debug, Deserialize)]
pub struct Sample {
    /// The series' labels.
    pub metric: std::collections::BTreeMap<String, String>,
    /// `[timestamp, "value"]`.
    value: (f64, String),
}

impl Sample {
    /// The sample's value.
    pub fn value(&self) -> f64 {
        self.value.1.parse().unwrap_or(f64::NAN)
    }

    /// The label `name`, empty when absent.
    pub fn label(&self, name: &str) -> &str {
        self.metric.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Sample>,
}

/// A Prometheus process; killed on drop, its log printed when the test fails.
pub struct Prometheus {
    process: Process,
    port: u16,
    http: reqwest::blocking::Client,
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("deploy")
}

impl Prometheus {
    /// Start Prometheus scraping `targets` (`host:port` of debug listeners) as job `ipcr` every
    /// second, with the alerting rules of `deploy/alerts.yml` evaluated every second; `None`
    /// when `prometheus` is missing (the test is skipped, or fails under `CI=true`).
    pub fn start(targets: &[String]) -> Option<Prometheus> {
        let bin = require_tool("prometheus")?;
        let mut process = Process::new("prometheus", "ipcr-prometheus-");
        let rules = process.root().join("alerts.yml");
        std::fs::copy(deploy_dir().join("alerts.yml"), &rules).expect("copying deploy/alerts.yml");
        let config = process.root().join("prometheus.yml");
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\nscrape_configs:\n  - job_name: ipcr\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .expect("writing prometheus.yml");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", process.data_dir().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        process.spawn(cmd, &format!("on 127.0.0.1:{port}"));
        let prometheus = Prometheus {
            process,
            port,
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        };
        prometheus.wait(PROMETHEUS_TIMEOUT, "the server ready", || {
            prometheus
                .http
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .is_ok_and(|r| r.status().is_success())
                .then_some(())
        });
        Some(prometheus)
    }

    /// The result of the instant query `expr`; panics when the server refuses it.
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        query_at(&self.http, &format!("http://127.0.0.1:{}", self.port), expr)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// The single value `expr` answers, `None` for an empty result.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        assert!(result.len() <= 1, "{expr} answered {result:?}");
        result.first().map(Sample::value)
    }

    /// Poll `check` until it answers, panicking with `what` after `timeout`.
    pub fn wait<T>(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// The result of the instant query `expr` on the Prometheus at `base` (`http://host:port`).
pub fn query_at(http: &reqwest::blocking::Client, base: &str, expr: &str) -> Result<Vec<Sample>, String> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), &[("query", expr)])
        .map_err(|e| format!("query {expr}: {e}"))?;
    let answer: Answer = http
        .get(url)
        .send()
        .and_then(|r| r.json())
        .map_err(|e| format!("query {expr}: {e}"))?;
    if answer.status != "success" {
        return Err(format!("query {expr}: {:?}", answer.error));
    }
    Ok(answer.data.map(|d| d.result).unwrap_or_default())
}

/// `promtool check metrics` over `text` (a scrape): `Err` with what it said unless it passes
/// (its lint included: names, units, help texts). `None` when `promtool` is missing.
pub fn promtool_check_metrics(text: &str) -> Option<Result<(), String>> {
    let promtool = require_tool("promtool")?;
    let out = tools::run_with_input(
        Command::new(promtool).args(["check", "metrics"]),
        text.as_bytes(),
        Duration::from_secs(30),
    );
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(out.describe())
    })
}

/// `promtool` run on `args` from `deploy/`: `Err` with what it said unless it passes.
pub fn promtool_in_deploy(args: &[&str]) -> Option<Result<String, String>> {
    let promtool = require_tool("promtool")?;
    let out = tools::run(
        Command::new(promtool).args(args).current_dir(deploy_dir()),
        Duration::from_secs(60),
    );
    Some(if out.status.success() {
        Ok(out.stdout_text())
    } else {
        Err(out.describe())
    })
}
