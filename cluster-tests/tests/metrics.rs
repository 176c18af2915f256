//! Three nodes' metrics scraped by a real Prometheus (Debian's `prometheus`) with the alerting
//! rules of `deploy/`, read back through its query API: every target up, exactly one leader,
//! request counters rising with pushes, a killed node seen down and its alert raised; what
//! each node serves passes `promtool check metrics`; `deploy/`'s configuration and rules pass
//! `promtool check` and the rules' unit tests.

use std::time::Duration;

use cluster_tests::Cluster;
use cluster_tests::client::{Registry, http_client};
use cluster_tests::prometheus::{PROMETHEUS_TIMEOUT, Prometheus, promtool_check_metrics, promtool_in_deploy};

const METRICS_ON: [(&str, &str); 1] = [("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true")];

#[test]
fn deploy_configuration_and_rules_pass_promtool() {
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let Some(result) = promtool_in_deploy(args) else {
            return;
        };
        if let Err(e) = result {
            panic!("promtool {}: {e}", args.join(" "));
        }
    }
}

#[test]
fn prometheus_scrapes_three_nodes_and_sees_one_leader() {
    let mut cluster = Cluster::start(3, &METRICS_ON);
    let targets: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.metrics_host().expect("metrics are on"))
        .collect();
    let http = http_client();
    for t in &targets {
        let text = http
            .get(format!("http://{t}/metrics"))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("scraping {t}: {e}"));
        match promtool_check_metrics(&text) {
            None => return,
            Some(Err(e)) => panic!("promtool check metrics on {t}: {e}\n{text}"),
            Some(Ok(())) => {}
        }
    }
    let Some(prom) = Prometheus::start(&targets) else {
        return;
    };

    prom.wait(PROMETHEUS_TIMEOUT, "three targets up", || {
        let up = prom.query(r#"up{job="ipcr"} == 1"#);
        (up.len() == 3).then_some(())
    });
    // Exactly one node says it leads, and it is the leader every node names.
    let leader = cluster.wait_leader();
    let leader_target = cluster.nodes[leader].metrics_host().expect("metrics are on");
    let leading = prom.wait(PROMETHEUS_TIMEOUT, "one leader in the metrics", || {
        let leading = prom.query("ipcr_raft_is_leader == 1");
        (leading.len() == 1 && prom.value("sum(ipcr_raft_is_leader)") == Some(1.0)).then_some(leading)
    });
    assert_eq!(leading[0].label("instance"), leader_target);
    let status = cluster.status(leader).expect("status");
    let named = prom.query("ipcr_raft_leader_id");
    assert_eq!(named.len(), 3, "{named:?}");
    assert!(
        named
            .iter()
            .all(|s| s.value() == status.leader.expect("a leader") as f64),
        "every node names the leader: {named:?}"
    );
    assert_eq!(prom.value("min(ipcr_raft_voters)"), Some(3.0));

    // Pushes to every node raise the request counters that Prometheus scrapes.
    let pushed = |prom: &Prometheus| {
        prom.value(r#"sum(ipcr_http_requests_total{operation="upload_put",code="201"})"#)
            .unwrap_or(0.0)
    };
    let before = pushed(&prom);
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for host in cluster.hosts() {
        Registry::new(&format!("http://{host}"))
            .push_blob_chunked("metrics/app", &blob, &[100_000])
            .expect("chunked push");
    }
    prom.wait(PROMETHEUS_TIMEOUT, "the pushes counted", || {
        (pushed(&prom) >= before + 3.0).then_some(())
    });
    let received = prom
        .value(r#"sum(ipcr_http_received_bytes_total{operation=~"upload_.*"})"#)
        .expect("received bytes");
    assert!(received >= 3.0 * blob.len() as f64, "{received}");
    prom.wait(PROMETHEUS_TIMEOUT, "the blob held by every node", || {
        let held = prom.query("ipcr_store_bytes");
        (held.len() == 3 && held.iter().all(|s| s.value() >= blob.len() as f64)).then_some(())
    });
    // No repository name or digest is a label of any series.
    let series = prom.query(r#"{job="ipcr"}"#);
    assert!(!series.is_empty());
    for s in &series {
        assert!(
            s.metric
                .values()
                .all(|v| !v.contains("metrics/app") && !v.contains("sha256:")),
            "{s:?}"
        );
    }

    // A node killed is down for Prometheus, and IPCRNodeDown is raised (pending for its `for`).
    let victim = (leader + 1) % 3;
    let victim_target = cluster.nodes[victim].metrics_host().expect("metrics are on");
    cluster.nodes[victim].kill9();
    prom.wait(PROMETHEUS_TIMEOUT, "the killed node down", || {
        let down = prom.query(r#"up{job="ipcr"} == 0"#);
        (down.len() == 1 && down[0].label("instance") == victim_target).then_some(())
    });
    prom.wait(PROMETHEUS_TIMEOUT, "IPCRNodeDown raised", || {
        let alerts = prom.query(r#"ALERTS{alertname="IPCRNodeDown"}"#);
        alerts
            .iter()
            .any(|a| a.label("instance") == victim_target)
            .then_some(())
    });
    // The two others still agree on one leader.
    prom.wait(Duration::from_secs(30), "one leader among the living", || {
        (prom.value("sum(ipcr_raft_is_leader)") == Some(1.0)).then_some(())
    });
    let _ = prom.log();
}
