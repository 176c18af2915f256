//! Linearizable tags under a nemesis (issue 9): six clients write unique manifests to three
//! tags and read them through random nodes of a three-node cluster while a nemesis pauses the
//! leader or a follower (`SIGSTOP`), `kill -9`s and restarts nodes, and cuts nodes off in
//! network namespaces; every tag's history must be linearizable
//! (`cluster_tests::linearizability`, itself tested against known-bad histories).
//!
//! Bounded here (`IPCR_JEPSEN_SECS`, default 60 s of faults); the `jepsen` binary runs it
//! longer and repeatedly (see docs/architecture.md, Consistency).

use std::time::Duration;

use cluster_tests::jepsen::{self, Config};
use cluster_tests::netns::require_netns;

#[test]
fn tags_stay_linearizable_under_pauses_kills_and_partitions() {
    if !require_netns() {
        return;
    }
    let secs = std::env::var("IPCR_JEPSEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed = std::env::var("IPCR_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(jepsen::clock_seed);
    eprintln!("jepsen: seed {seed}, {secs} s");
    let outcome = jepsen::run(&Config::standard(Duration::from_secs(secs), seed));
    let report = outcome.report();
    eprintln!("{report}");
    if !outcome.violations.is_empty() {
        let path = std::env::temp_dir().join(format!("ipcr-jepsen-{seed}.jsonl"));
        outcome.save(&path).expect("saving the history");
        panic!(
            "tag reads are not linearizable (seed {seed}; history in {}):\n{report}",
            path.display()
        );
    }
    let s = outcome.stats;
    assert!(
        s.writes_ok > 50 && s.reads_ok > 50,
        "too little happened to judge: {s}"
    );
}
