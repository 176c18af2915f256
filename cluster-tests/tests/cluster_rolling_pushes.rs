//! `docker push` never fails while nodes come and go (issue 9): two streams of pushes of
//! fresh images through haproxy (round robin, health checks on `/ready`, no stickiness) goes on
//! while each of the three nodes in turn is stopped with `SIGTERM` (it hands leadership over
//! and drains) and restarted, and then while one node is `kill -9`ed and restarted. Docker
//! retries failed layer uploads by itself; nothing else is retried, and no push may fail.
//! Every pushed image is then pulled back through the balancer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::clients::{Docker, pushed_digest};
use cluster_tests::oci;
use cluster_tests::tools::{require_docker, require_tool, run};
use cluster_tests::{Balancer, Cluster};

/// Images built up front, each with a layer of its own.
const IMAGES: usize = 10;
/// Size of each image's own layer.
const LAYER: usize = 4 << 20;
/// Upper bound on the whole push stream.
const DEADLINE: Duration = Duration::from_secs(600);

/// What the pusher did.
#[derive(Default)]
struct Pushes {
    ok: Vec<(String, String)>,
    failed: Vec<String>,
}

#[test]
fn docker_pushes_survive_a_rolling_restart_and_a_kill() {
    let Some(docker_bin) = require_docker() else {
        return;
    };
    if require_tool("haproxy").is_none() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let lb = Balancer::start(&cluster.hosts());
    let mut docker = Docker::new(docker_bin.clone());
    let repo = format!("{}/rolling/pushes", lb.host());
    let contexts = tempfile::tempdir().expect("tempdir");
    let mut tags = Vec::new();
    for i in 0..IMAGES {
        let dir = contexts.path().join(format!("img{i}"));
        std::fs::create_dir(&dir).expect("context");
        std::fs::write(dir.join("data.bin"), oci::noise(500 + i as u64, LAYER)).expect("data");
        std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY data.bin /data.bin\n")
            .expect("Dockerfile");
        let tag = format!("{repo}:img{i}");
        docker.must_build(&dir, &tag);
        tags.push(tag);
    }
    // Two pushers: each pushes every image under a tag of its own, round after round, until
    // stopped (the first push of an image uploads its layer, later ones the manifest); the
    // second goes through the images in reverse, so layers are uploaded for a while.
    let stop = Arc::new(AtomicBool::new(false));
    let pushes = Arc::new(Mutex::new(Pushes::default()));
    let pushers: Vec<_> = (0..2)
        .map(|id| {
            let (stop, pushes, docker_bin, repo) =
                (stop.clone(), pushes.clone(), docker_bin.clone(), repo.clone());
            let mut order = tags.clone();
            if id == 1 {
                order.reverse();
            }
            std::thread::spawn(move || {
                let started = Instant::now();
                let docker = |args: &[&str]| {
                    run(
                        std::process::Command::new(&docker_bin).args(args),
                        Duration::from_secs(300),
                    )
                };
                let mut round = 0;
                while !stop.load(Ordering::SeqCst) && started.elapsed() < DEADLINE {
                    for (i, tag) in order.iter().enumerate() {
                        let target = format!("{repo}:p{id}-{i}-r{round}");
                        docker(&["tag", tag, &target]);
                        let out = docker(&["push", &target]);
                        let mut p = pushes.lock().unwrap_or_else(|e| e.into_inner());
                        if out.status.success() {
                            p.ok.push((target.clone(), pushed_digest(&out)));
                        } else {
                            eprintln!("FAILED PUSH of {target}:\n{}", out.describe());
                            p.failed.push(format!("{target}: {}", out.describe()));
                        }
                        drop(p);
                        docker(&["rmi", &target]);
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    round += 1;
                }
            })
        })
        .collect();
    let wait_pushes = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let from = pushes.lock().unwrap_or_else(|e| e.into_inner()).ok.len();
        while pushes.lock().unwrap_or_else(|e| e.into_inner()).ok.len() < from + n {
            assert!(Instant::now() < deadline, "pushes stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_pushes(2);
    // Rolling restart: each node in turn, the leader included, by SIGTERM.
    for i in 0..3 {
        let started = Instant::now();
        cluster.nodes[i].sigterm();
        cluster.nodes[i].wait_exit(Duration::from_secs(60));
        cluster.nodes[i].restart();
        cluster.wait_voters(3);
        eprintln!("node{i} restarted in {:?}", started.elapsed());
        wait_pushes(1);
    }
    // And one kill -9.
    let leader = cluster.wait_leader();
    cluster.nodes[leader].kill9();
    wait_pushes(1);
    cluster.nodes[leader].restart();
    cluster.wait_voters(3);
    wait_pushes(1);
    stop.store(true, Ordering::SeqCst);
    for p in pushers {
        p.join().expect("pusher");
    }
    let p = pushes.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("{} pushes acknowledged, {} failed", p.ok.len(), p.failed.len());
    assert!(p.failed.is_empty(), "failed pushes:\n{}", p.failed.join("\n"));
    // Everything acknowledged is there.
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("http");
    for (tag, digest) in &p.ok {
        let (_, reference) = tag.rsplit_once(':').expect("tag");
        let r = http
            .get(format!(
                "{}/v2/rolling/pushes/manifests/{reference}",
                lb.base_url()
            ))
            .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
            .send()
            .expect("GET manifest");
        assert_eq!(r.status().as_u16(), 200, "{tag}");
        assert_eq!(
            r.headers()["Docker-Content-Digest"].to_str().expect("digest"),
            digest,
            "{tag}"
        );
    }
    drop(docker);
}
