//! The cluster's and the IPFS backend's state as HTML: members, roles, the leader, indexes and
//! lag, this node's health, under-replicated blobs, garbage collection; pins pending and failed
//! with their reasons. Pure functions of what the handlers gathered (the same
//! [`ClusterStatus`] as `GET /cluster/status`). Only `ui` calls this module.

use ipcr_proto::admin::ClusterStatus;
use ipcr_proto::gc::GcStatus;
use ipcr_proto::{BlobRecord, Digest};
use maud::{Markup, html};

use super::layout::{self, Chrome, Nav, digest, human, short_cid, size, time};
use super::pages::pin_pill;

/// What the cluster page shows.
pub struct ClusterView {
    /// This node's view of the cluster.
    pub status: ClusterStatus,
    /// This node's failing health checks (`/debug/health`).
    pub problems: Vec<(String, String)>,
    /// Whether this node is stopping.
    pub draining: bool,
    /// `storage.replicas`.
    pub replicas: usize,
}

/// What the IPFS page shows.
pub struct IpfsView {
    /// The backend's progress; `None`: no backend configured.
    pub ipfs: Option<ipcr_proto::admin::IpfsStatus>,
    /// The gateway's URL of a CID, `<cid>` standing for it.
    pub gateway: Option<String>,
    /// Blobs the backend has work to do for, in digest order (the first of them).
    pub queue: Vec<(Digest, BlobRecord)>,
    /// The backend's failing health check, if any.
    pub problem: Option<(String, String)>,
}

fn stat(key: &str, value: Markup) -> Markup {
    html! { div.stat { div.k { (key) } div.v { (value) } } }
}

/// A node id (64 bits: too wide for a stat's large figures).
fn id_stat(key: &str, id: Option<u64>) -> Markup {
    html! {
        div.stat { div.k { (key) } @match id { Some(id) => div.v.id { (id) }, None => div.v { span.bad { "none" } } } }
    }
}

fn opt(v: Option<u64>) -> Markup {
    html! { @match v { Some(v) => (v), None => span.muted { "—" } } }
}

/// `/ui/cluster`.
pub fn cluster(chrome: &Chrome, v: &ClusterView, now_ms: u64) -> Markup {
    let s = &v.status;
    let lag = match (s.committed, s.applied) {
        (Some(c), Some(a)) => Some(c.saturating_sub(a)),
        (Some(c), None) => Some(c),
        _ => None,
    };
    let healthy = v.problems.is_empty() && !v.draining;
    let leads = s.leader == Some(s.id);
    let body = html! {
        h1 { "Cluster" }
        p.sub {
            (s.members.len()) " member" @if s.members.len() != 1 { "s" } " · as node " (s.id) " sees it"
            @if !leads { " (the leader knows each member's progress)" }
        }
        div.stats {
            (id_stat("This node", Some(s.id)))
            (stat("Role", html! { (s.state) }))
            (id_stat("Leader", s.leader))
            (stat("Term", html! { (s.term) }))
            (stat("Last log index", opt(s.last_log_index)))
            (stat("Committed", opt(s.committed)))
            (stat("Applied", opt(s.applied)))
            (stat("Apply lag", opt(lag)))
            (stat("Under-replicated", html! {
                @if s.under_replicated_blobs == 0 { span.ok { "0" } } @else { span.warn { (s.under_replicated_blobs) } }
            }))
            (stat("Health", html! { @if healthy { span.ok { "OK" } } @else { span.bad { "unhealthy" } } }))
        }
        h2 { "Members" }
        div.card {
            table {
                thead { tr { th { "ID" } th { "Cluster address" } th { "Membership" } th { "Role" } th.num { "Matched index" } th.num { "Lag" } } }
                tbody {
                    @for m in &s.members {
                        tr {
                            td.mono { (m.id) }
                            td.mono.wrap { (m.addr) }
                            td { @if m.voter { span.pill { "voter" } } @else { span.pill.warn { "learner" } } }
                            td {
                                @if s.leader == Some(m.id) { span.pill.ok { "leader" } }
                                @else if m.voter { "follower" } @else { "learner" }
                                @if m.id == s.id { " " span.muted.small { "(this node)" } }
                            }
                            td.num { (opt(m.matched)) }
                            td.num { (opt(match (s.last_log_index, m.matched) {
                                (Some(last), Some(matched)) if leads => Some(last.saturating_sub(matched)),
                                _ => None,
                            })) }
                        }
                    }
                }
            }
        }
        h2 { "Health of this node" }
        div.card {
            @if healthy {
                div.empty { "All checks pass: the disk, and the IPFS backend when health.storagedriver probes it." }
            } @else {
                table {
                    thead { tr { th { "Check" } th { "Error" } } }
                    tbody {
                        @if v.draining { tr { td { "shutdown" } td { "the node is stopping" } } }
                        @for (check, error) in &v.problems { tr { td.mono { (check) } td.wrap { (error) } } }
                    }
                }
            }
        }
        p.small.muted {
            "Blobs are kept on " (v.replicas) " node" @if v.replicas != 1 { "s" }
            " (storage.replicas, or the cluster size if smaller); under-replicated blobs do not count those pinned on IPFS."
        }
        h2 { "Garbage collection" }
        (gc(&s.gc, now_ms))
    };
    layout::page("Cluster", chrome, Nav::Cluster, body)
}

/// A duration: `850 ms`, `12.3 s`.
fn took(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn gc(g: &GcStatus, now_ms: u64) -> Markup {
    html! {
        div.card {
            dl.kv {
                dt { "Running" }
                dd {
                    @match &g.running {
                        Some(r) => { "run " code { (r.run) } " on node " (r.node) ", started " (time(r.started_ms, now_ms)) }
                        None => span.muted { "none" },
                    }
                }
                dt { "Last collection" }
                dd {
                    @match &g.last {
                        Some(r) => {
                            "finished " (time(r.finished_ms, now_ms)) " on node " (r.node) ", took "
                            (took(r.finished_ms.saturating_sub(r.started_ms)))
                            br;
                            "removed " (r.totals.tags) " tags, " (r.totals.manifests) " manifests, "
                            (r.totals.blobs) " blob links; " (r.tally.blobs_removed) " blobs (" (human(r.tally.bytes_removed)) ")"
                            br;
                            span.small.muted {
                                "delete untagged: " (r.options.delete_untagged) " · grace: "
                                (format!("{} s", r.options.grace_ms / 1000)) " · run " (r.run)
                            }
                        }
                        None => span.muted { "none yet" },
                    }
                }
            }
        }
    }
}

/// `/ui/ipfs`.
pub fn ipfs(chrome: &Chrome, v: &IpfsView) -> Markup {
    let body = html! {
        h1 { "IPFS" }
        @match &v.ipfs {
            None => {
                p.sub { "Blobs live on the nodes' disks only." }
                div.card { div.empty {
                    b { "No IPFS backend configured." }
                    br;
                    "Configure " code { "storage.ipfs" } " (a Kubo node) or " code { "storage.estuary" }
                    " to keep every blob on IPFS as well; see the configuration documentation."
                } }
            }
            Some(s) => {
                p.sub { "Backend " code { (s.backend) } ": every committed blob is uploaded once it is durable on the disks, under the CID IPCR computed." }
                div.stats {
                    (stat("Backend", html! { (s.backend) }))
                    (stat("Pinned", html! { span.ok { (s.pinned) } }))
                    (stat("Pending", html! { @if s.pending == 0 { "0" } @else { span.warn { (s.pending) } } }))
                    (stat("Failed", html! { @if s.failed == 0 { "0" } @else { span.bad { (s.failed) } } }))
                    (stat("Health probe", html! { @match &v.problem { None => span.ok { "no failures" }, Some(_) => span.bad { "failing" } } }))
                }
                div.card { dl.kv {
                    dt { "Gateway" }
                    dd { @match &v.gateway { Some(g) => code { (g) }, None => span.muted { "none configured: CIDs are shown without links" } } }
                    dt { "Health probe" }
                    dd {
                        @match &v.problem {
                            Some((check, error)) => { code { (check) } ": " (error) }
                            None => span.muted { "no failures (the backend is probed when health.storagedriver is enabled)" },
                        }
                    }
                } }
                h2 { "Failures" @if s.failed > s.failures.len() as u64 { " (the first " (s.failures.len()) " of " (s.failed) ")" } }
                div.card {
                    @if s.failures.is_empty() {
                        div.empty { "No failures." }
                    } @else {
                        table {
                            thead { tr { th { "Blob" } th { "CID" } th.num { "Attempts" } th { "Reason" } } }
                            tbody { @for f in &s.failures {
                                tr { td { (digest(&f.digest)) } td.mono.small title=(f.cid) { (short_cid(&f.cid)) } td.num { (f.attempts) } td.wrap { (f.reason) } }
                            } }
                        }
                    }
                }
                h2 { "Queue" @if !v.queue.is_empty() { " (the first " (v.queue.len()) ")" } }
                div.card {
                    @if v.queue.is_empty() {
                        div.empty { "Nothing waiting: every blob is on the backend." }
                    } @else {
                        table {
                            thead { tr { th { "Blob" } th.num { "Size" } th { "CID" } th { "State" } } }
                            tbody { @for (d, b) in &v.queue {
                                tr {
                                    td { (digest(&d.to_string())) }
                                    td.num { (size(b.size)) }
                                    td.mono.small { @if let Some(i) = &b.ipfs { span title=(i.cid) { (short_cid(&i.cid)) } } }
                                    td { @if let Some(i) = &b.ipfs { (pin_pill(&i.state)) } }
                                }
                            } }
                        }
                    }
                }
            }
        }
    };
    layout::page("IPFS", chrome, Nav::Ipfs, body)
}
