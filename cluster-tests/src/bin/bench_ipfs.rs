//! Benchmark of the Estuary backend (the emulator on loopback) against the filesystem backend,
//! in one run on one machine.
//!
//! ```text
//! cargo build --release -p ipcr-node -p cluster-tests && cargo run --release -p cluster-tests --bin bench_ipfs
//! ```
//!
//! Two single nodes, one with `storage.estuary`, one without. Each round pushes the same 1 GiB
//! blob (POST + PUT, curl) to both, alternating which goes first, then waits until the Estuary
//! node reports the blob pinned (the upload to the backend happens after the `201`), then pulls
//! it from both. The CID's cost is the difference of the push times; the backend's upload is
//! timed separately from the client's push. A last pull is of the blob after the Estuary
//! node's copy was removed: served from the emulator's gateway, verified, through the node.
//! Prints a Markdown report for `docs/benchmarks.md`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cluster_tests::bench::{make_blob, median, pull, push_big};
use cluster_tests::emulator::{Emulator, TOKEN};
use cluster_tests::{Cluster, Node};

const ROUNDS: usize = 3;

fn pinned(cluster: &Cluster) -> u64 {
    cluster
        .status(0)
        .ok()
        .and_then(|s| s.ipfs)
        .map(|i| i.pinned)
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let work = tempfile::Builder::new().prefix("ipcr-bench-ipfs-").tempdir()?;
    let blob = work.path().join("blob");
    eprintln!("generating a 1 GiB blob ...");
    let digest = make_blob(&blob, 0x2545_F491_4F6C_DD1D)?;
    let quiet = [
        ("REGISTRY_LOG_LEVEL", "warn"),
        ("REGISTRY_LOG_ACCESSLOG_DISABLED", "true"),
    ];
    let fs_node = Node::start_with_env("fs", &quiet);
    let emu = Emulator::start();
    let (url, redirect) = (emu.url(), "true".to_string());
    let mut env = quiet.to_vec();
    env.extend([
        ("REGISTRY_STORAGE_ESTUARY_URL", url.as_str()),
        ("REGISTRY_STORAGE_ESTUARY_SHUTTLE_URL", url.as_str()),
        ("REGISTRY_STORAGE_ESTUARY_AUTH_TOKEN", TOKEN),
        ("REGISTRY_STORAGE_REDIRECT_DISABLE", redirect.as_str()),
    ]);
    let estuary = Cluster::start(1, &env);
    let est_base = estuary.nodes[0].base_url();

    let (mut push_fs, mut push_est, mut pin_secs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pull_fs, mut pull_est) = (Vec::new(), Vec::new());
    let mut pinned_at_ack = true;
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        let repo = format!("bench/r{round}");
        let mut est = || -> Result<()> {
            let before = pinned(&estuary);
            push_est.push(push_big(&est_base, &repo, &blob, &digest)?);
            let acked = Instant::now();
            if round == 0 {
                pinned_at_ack = pinned(&estuary) > before;
            }
            // The same digest is committed once: only the first round uploads to the backend.
            if round == 0 {
                let deadline = acked + Duration::from_secs(600);
                while pinned(&estuary) <= before {
                    if Instant::now() > deadline {
                        bail!("the blob was not pinned within 600 s");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                pin_secs.push(acked.elapsed().as_secs_f64());
            }
            Ok(())
        };
        if round % 2 == 0 {
            push_fs.push(push_big(&fs_node.base_url(), &repo, &blob, &digest)?);
            est()?;
        } else {
            est()?;
            push_fs.push(push_big(&fs_node.base_url(), &repo, &blob, &digest)?);
        }
        for (base, out) in [
            (fs_node.base_url(), &mut pull_fs),
            (est_base.clone(), &mut pull_est),
        ] {
            let (code, secs, size) = pull(&format!("{base}/v2/{repo}/blobs/{digest}"))?;
            if code != 200 || size != cluster_tests::bench::BIG {
                bail!("pull from {base}: {code}, {size} bytes");
            }
            out.push(secs);
        }
    }
    // The Estuary node's copy removed: the pull is served from the gateway, verified first.
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    std::fs::remove_file(
        estuary.nodes[0]
            .data_dir()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex),
    )?;
    let (code, restore_secs, size) = pull(&format!("{est_base}/v2/bench/r0/blobs/{digest}"))?;
    if code != 200 || size != cluster_tests::bench::BIG {
        bail!("pull through the gateway: {code}, {size} bytes");
    }

    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    let (pf, pe) = (median(&push_fs), median(&push_est));
    let cid_cost = (pe - pf) / pe;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("### IPFS run, data under `{}`", std::env::temp_dir().display());
    println!();
    println!(
        "{cores} cores; two single nodes, one with `storage.estuary` (the emulator on loopback), \
         one without; client curl; {ROUNDS} rounds, alternating which node is pushed first."
    );
    println!();
    println!("| measurement | runs | median |");
    println!("|---|---|---|");
    println!(
        "| 1 GiB push, filesystem backend (s) | {} | **{pf:.2}** |",
        fmt(&push_fs)
    );
    println!(
        "| 1 GiB push, Estuary backend, until `201` (s) | {} | **{pe:.2}** |",
        fmt(&push_est)
    );
    println!(
        "| `201` → pinned on the emulator, in the background (s) | {} | **{:.2}** |",
        fmt(&pin_secs),
        median(&pin_secs)
    );
    println!(
        "| 1 GiB pull, filesystem backend (s) | {} | **{:.2}** |",
        fmt(&pull_fs),
        median(&pull_fs)
    );
    println!(
        "| 1 GiB pull, Estuary backend, from disk (s) | {} | **{:.2}** |",
        fmt(&pull_est),
        median(&pull_est)
    );
    println!(
        "| 1 GiB pull of a blob no node holds: gateway → verified → client (s) | | **{restore_secs:.2}** |"
    );
    println!();
    println!("| goal | measured | met |");
    println!("|---|---|---|");
    println!(
        "| the backend upload does not slow the push (it runs after `201`) | `201` after {pe:.2} s, blob {} pinned then; pinned {:.2} s later | {} |",
        if pinned_at_ack { "already" } else { "not yet" },
        median(&pin_secs),
        if pinned_at_ack { "**no**" } else { "yes" }
    );
    println!(
        "| CID computation < 15 % of push time | {:.1} % ((Estuary push − filesystem push) / Estuary push) | {} |",
        cid_cost * 100.0,
        if cid_cost < 0.15 { "yes" } else { "**no**" }
    );
    Ok(())
}
