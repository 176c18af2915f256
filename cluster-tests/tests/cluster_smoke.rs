//! A three-node cluster behind haproxy: pushes through the balancer are readable from every
//! node directly.

use cluster_tests::client::Registry;
use cluster_tests::tools::require_tool;
use cluster_tests::{Balancer, Cluster};

#[test]
fn three_nodes_behind_a_balancer_serve_what_any_of_them_took() {
    if require_tool("haproxy").is_none() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let lb = Balancer::start(&cluster.hosts());
    let reg = Registry::new(&lb.base_url());
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = reg
        .push_blob_chunked("smoke/repo", &blob, &[1_000_000, 2_000_000])
        .expect("chunked push through the balancer");
    for host in cluster.hosts() {
        let direct = Registry::new(&format!("http://{host}"));
        let got = direct
            .get_blob("smoke/repo", &digest)
            .expect("blob from every node");
        assert_eq!(got.bytes, blob, "{host} served different bytes");
    }
    let status = cluster.status(0).expect("status");
    assert_eq!(status.members.len(), 3);
}
