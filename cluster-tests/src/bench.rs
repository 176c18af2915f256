//! Helpers shared by the benchmarks (`src/bin/bench_*.rs`): a 1 GiB incompressible blob, a
//! timed push and pull with `curl`, medians and percentiles.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

/// Size of the big blob.
pub const BIG: u64 = 1 << 30;

/// A 1 GiB incompressible file (a xorshift stream from `seed`, never 0) and its digest.
pub fn make_blob(path: &Path, seed: u64) -> Result<String> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut hasher = Sha256::new();
    let mut state: u64 = seed;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..(BIG >> 20) {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        hasher.update(&buf);
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// `curl` a request; answers (status, seconds, headers).
pub fn curl(args: &[&str], url: &str) -> Result<(u16, f64, String)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "\n%{http_code} %{time_total}",
        ])
        .args(args)
        .arg(url)
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let last = text.lines().last().unwrap_or_default().to_string();
    let (code, secs) = last.split_once(' ').context("curl printed no status")?;
    Ok((code.parse()?, secs.parse()?, text))
}

pub fn location(base: &str, headers: &str) -> Result<String> {
    let loc = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        })
        .map(|(_, v)| v.trim().to_string())
        .context("no Location")?;
    Ok(if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    })
}

/// POST + PUT of the whole file, timed end to end.
pub fn push_big(base: &str, repo: &str, file: &Path, digest: &str) -> Result<f64> {
    let _ = Command::new("sync").status();
    let started = Instant::now();
    push_file(base, repo, file, digest)?;
    Ok(started.elapsed().as_secs_f64())
}

/// A monolithic push of `file` as blob `digest` into `repo`: `POST`, then `PUT` of the body.
pub fn push_file(base: &str, repo: &str, file: &Path, digest: &str) -> Result<()> {
    push_file_with(&[], base, repo, file, digest)
}

/// [`push_file`], with `extra` curl arguments on both requests (credentials, a CA).
pub fn push_file_with(extra: &[&str], base: &str, repo: &str, file: &Path, digest: &str) -> Result<()> {
    let post = format!("{base}/v2/{repo}/blobs/uploads/");
    let (code, _, headers) = curl(&[extra, &["-X", "POST"]].concat(), &post)?;
    if code != 202 {
        bail!("POST to {post}: {code}");
    }
    let loc = location(base, &headers)?;
    let sep = if loc.contains('?') { '&' } else { '?' };
    let f = file.display().to_string();
    let put = [
        extra,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            &f,
        ],
    ]
    .concat();
    let (code, _, _) = curl(&put, &format!("{loc}{sep}digest={digest}"))?;
    if code != 201 {
        bail!("PUT {digest} to {base}: {code}");
    }
    Ok(())
}

/// `GET` a blob with curl into `/dev/null`; answers (status, seconds, bytes).
pub fn pull(url: &str) -> Result<(u16, f64, u64)> {
    let _ = Command::new("sync").status();
    let out = Command::new("curl")
        .args([
            "-s",
            "-L",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total} %{size_download}",
        ])
        .arg(url)
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut f = text.split_whitespace();
    let (code, secs, size) = (f.next(), f.next(), f.next());
    match (code, secs, size) {
        (Some(c), Some(t), Some(n)) => Ok((c.parse()?, t.parse()?, n.parse()?)),
        _ => bail!("curl printed {text:?}"),
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// `wrk -t2 -c64 -d10s` requests per second of a manifest GET by tag.
pub fn wrk(url: &str) -> Result<f64> {
    wrk_with(&["-H", "Accept: application/vnd.oci.image.manifest.v1+json"], url)
}

/// `wrk -t2 -c64 -d10s <extra> <url>` requests per second; any non-2xx answer is an error.
pub fn wrk_with(extra: &[&str], url: &str) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", "-d10s"])
        .args(extra)
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        bail!("wrk saw errors against {url}:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

/// `sysconf(_SC_CLK_TCK)` on Linux: the unit of the CPU times in `/proc/<pid>/stat`.
const CLOCK_TICKS: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` (`pid` may be `self`) after the command name, which is in
/// parentheses and may hold spaces: field 3 is index 0.
pub fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The sum of the clock-tick fields at `at`, in seconds.
fn ticks(fields: &[String], at: &[usize]) -> Option<f64> {
    at.iter()
        .map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum::<Option<f64>>()
        .map(|t| t / CLOCK_TICKS)
}

/// User + system CPU seconds of a running process; `None` when it cannot be read.
pub fn process_cpu(pid: u32) -> Option<f64> {
    ticks(&stat_fields(&pid.to_string())?, &[11, 12])
}

/// User + system CPU seconds of this process's children that have been waited for.
pub fn reaped_children_cpu() -> Option<f64> {
    ticks(&stat_fields("self")?, &[13, 14])
}
