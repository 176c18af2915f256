//! What a migration tells its operator while it runs and when it ends: on a terminal, a bar
//! for each blob in flight, one for all bytes (throughput, ETA) and one for tags; otherwise
//! one log line per blob and per tag. The counters behind the closing summary live here too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ipcr_proto::digest::Digest;

/// What was done, counted as it happens.
#[derive(Default, Debug)]
pub struct Stats {
    /// Blobs streamed from the source.
    pub blobs_copied: AtomicU64,
    /// Their bytes.
    pub bytes_copied: AtomicU64,
    /// Blobs the destination repository already had.
    pub blobs_present: AtomicU64,
    /// Blobs the destination mounted from another of its repositories.
    pub blobs_mounted: AtomicU64,
    /// Manifests written (tags and the manifests they reference).
    pub manifests_written: AtomicU64,
    /// Referrers written.
    pub referrers_written: AtomicU64,
}

struct Bars {
    multi: MultiProgress,
    tags: ProgressBar,
    bytes: ProgressBar,
}

/// Progress of one run, shared by every transfer.
pub struct Progress {
    bars: Option<Bars>,
    tags_total: AtomicU64,
    tags_done: AtomicU64,
    /// The counters.
    pub stats: Stats,
    started: Instant,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid progress template")
        .progress_chars("=> ")
}

/// `sha256:0123456789ab`: enough of a digest to tell blobs apart on one line.
pub fn short(d: &Digest) -> String {
    format!("{}:{}", d.algorithm().name(), &d.hex()[..12])
}

impl Progress {
    /// Bars when `terminal`, log lines otherwise.
    pub fn new(terminal: bool) -> Progress {
        let bars = terminal.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let tags = multi.add(ProgressBar::new(0).with_style(style("tags  {pos}/{len} {wide_msg}")));
            let bytes = multi.add(ProgressBar::new(0).with_style(style(
                "bytes [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )));
            Bars { multi, tags, bytes }
        });
        Progress {
            bars,
            tags_total: AtomicU64::new(0),
            tags_done: AtomicU64::new(0),
            stats: Stats::default(),
            started: Instant::now(),
        }
    }

    /// The work ahead, once the plan is read: tags, and the bytes of every blob named.
    pub fn set_totals(&self, tags: u64, bytes: u64) {
        self.tags_total.store(tags, Relaxed);
        if let Some(b) = &self.bars {
            b.tags.set_length(tags);
            b.bytes.set_length(bytes);
            b.bytes.reset_eta();
        }
    }

    /// A line above the bars, or on stderr.
    pub fn line(&self, text: impl AsRef<str>) {
        match &self.bars {
            Some(b) => b.multi.suspend(|| eprintln!("{}", text.as_ref())),
            None => eprintln!("{}", text.as_ref()),
        }
    }

    /// A blob the destination has (or mounted): its bytes count as done.
    pub fn blob_done_without_copy(&self, size: u64, mounted: bool) {
        let counter = if mounted {
            &self.stats.blobs_mounted
        } else {
            &self.stats.blobs_present
        };
        counter.fetch_add(1, Relaxed);
        if let Some(b) = &self.bars {
            b.bytes.inc(size);
        }
    }

    /// A blob copy starting.
    pub fn blob_started(self: &Arc<Self>, digest: &Digest, size: u64) -> BlobProgress {
        let bar = self.bars.as_ref().map(|b| {
            let bar = b.multi.insert_before(
                &b.tags,
                ProgressBar::new(size).with_style(style(
                    "  {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                )),
            );
            bar.set_message(short(digest));
            bar
        });
        BlobProgress {
            progress: self.clone(),
            bar,
            sent: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            size,
        }
    }

    /// A tag finished (`outcome` says how), or failed.
    pub fn tag_finished(&self, name: &str, outcome: &str) {
        let done = self.tags_done.fetch_add(1, Relaxed) + 1;
        let total = self.tags_total.load(Relaxed);
        match &self.bars {
            Some(b) => {
                b.tags.inc(1);
                b.tags.set_message(format!("{name}: {outcome}"));
            }
            None => eprintln!("[{done}/{total}] {name}: {outcome}"),
        }
    }

    /// Clear the bars before the summary is printed.
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.tags.finish_and_clear();
            b.bytes.finish_and_clear();
            let _ = b.multi.clear();
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// One blob copy's progress; bytes are counted as the destination takes them.
pub struct BlobProgress {
    progress: Arc<Progress>,
    bar: Option<ProgressBar>,
    sent: Arc<AtomicU64>,
    started: Instant,
    size: u64,
}

impl BlobProgress {
    /// A counter to call with each chunk's length (it moves to the stream's task).
    pub fn counter(&self) -> impl Fn(usize) + Send + Sync + 'static {
        let bar = self.bar.clone();
        let total = self.progress.bars.as_ref().map(|b| b.bytes.clone());
        let sent = self.sent.clone();
        move |n| {
            sent.fetch_add(n as u64, Relaxed);
            if let Some(b) = &bar {
                b.inc(n as u64);
            }
            if let Some(t) = &total {
                t.inc(n as u64);
            }
        }
    }

    /// The copy failed: its bytes no longer count as done.
    pub fn failed(self, why: &str) {
        let sent = self.sent.load(Relaxed);
        if let Some(b) = &self.progress.bars {
            b.bytes.dec(sent);
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.progress.line(format!("blob copy failed: {why}"));
    }

    /// The destination took the whole blob.
    pub fn copied(self, digest: &Digest, repo: &str) {
        let stats = &self.progress.stats;
        stats.blobs_copied.fetch_add(1, Relaxed);
        stats.bytes_copied.fetch_add(self.size, Relaxed);
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.progress.line(format!(
                "copied {} to {repo} ({}, {:.1} s)",
                short(digest),
                human_bytes(self.size),
                self.started.elapsed().as_secs_f64()
            )),
        }
    }
}

/// `1.23 GiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn the_bars_templates_are_valid() {
        // Built as on a terminal (drawn nowhere here): a bad template panics when built.
        let p = Arc::new(Progress::new(true));
        p.set_totals(2, 20);
        let d = ipcr_proto::digest::Algorithm::Sha256.digest_bytes(b"x");
        let b = p.blob_started(&d, 10);
        (b.counter())(10);
        b.copied(&d, "r");
        p.blob_done_without_copy(10, false);
        p.tag_finished("r:1", "copied");
        p.line("a line above the bars");
        p.finish();
        assert_eq!(p.stats.blobs_present.load(Relaxed), 1);
    }

    #[test]
    fn counters_add_up_without_a_terminal() {
        let p = Arc::new(Progress::new(false));
        p.set_totals(1, 10);
        let d = ipcr_proto::digest::Algorithm::Sha256.digest_bytes(b"x");
        let b = p.blob_started(&d, 10);
        (b.counter())(4);
        b.failed("test");
        let b = p.blob_started(&d, 10);
        (b.counter())(10);
        b.copied(&d, "r");
        p.blob_done_without_copy(5, true);
        assert_eq!(p.stats.blobs_copied.load(Relaxed), 1);
        assert_eq!(p.stats.bytes_copied.load(Relaxed), 10);
        assert_eq!(p.stats.blobs_mounted.load(Relaxed), 1);
    }
}
