//! The registry's content as HTML: the repository list, a repository's tags, a manifest, and
//! the error pages. Pure functions of what `read` gathered; maud escapes every value, and no
//! client-supplied text is ever passed through `PreEscaped`. Only `ui` calls this module.

use maud::{Markup, html};

use super::layout::{
    self, Chrome, Nav, copy_box, digest, human, manifest_href, manifest_link, size, time, time_cell,
};
use super::oci::{self, Desc, Kind, Parsed};
use super::read::{BlobInfo, ManifestDetail, RepoList, TagList};

/// Largest part of a manifest's raw text shown on its page.
const RAW_SHOWN: usize = 256 * 1024;

/// `/`: every repository the visitor sees, with a filter box.
pub fn repositories(chrome: &Chrome, list: &RepoList, q: Option<&str>, now_ms: u64) -> Markup {
    let total_tags: usize = list.rows.iter().map(|r| r.tags).sum();
    let body = html! {
        h1 { "Repositories" }
        p.sub {
            span #shown { (list.rows.len()) } " of " (list.rows.len())
            @if list.more { "+" }
            " repositories · " (total_tags) " tags"
            @if let Some(q) = q { " · matching " code { (q) } " · " a href="/" { "show all" } }
        }
        form.search method="get" action="/" {
            input #filter type="search" name="q" value=[q] placeholder="Filter repositories (Enter searches every page)" autofocus;
            button type="submit" { "Search" }
        }
        div.card {
            @if list.rows.is_empty() {
                div.empty {
                    @if q.is_some() { "No repository matches." } @else { "No repositories yet. Push one with " code { "docker push" } "." }
                }
            } @else {
                table.fixed {
                    colgroup { col.w-name; col.w-num; col.w-size; col.w-time; }
                    thead { tr { th { "Repository" } th.num { "Tags" } th.num { "Size" } th { "Last push" } } }
                    tbody {
                        @for r in &list.rows {
                            tr data-name=(r.name) {
                                td.name { a href={ "/ui/repo/" (r.name) } { (r.name) } }
                                td.num { (r.tags) }
                                td.num { (size(r.size)) }
                                td.nowrap { @match r.last_push_ms { Some(ms) => (time(ms, now_ms)), None => span.muted { "—" } } }
                            }
                        }
                    }
                }
            }
        }
        @if list.more && let Some(last) = list.rows.last() {
            div.pages { a href=(next_href("/", q, &last.name)) { "Next page →" } }
        }
    };
    layout::page("Repositories", chrome, Nav::Repositories, body)
}

/// `path?last=...` (with `q` kept).
fn next_href(path: &str, q: Option<&str>, last: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(q) = q {
        query.append_pair("q", q);
    }
    query.append_pair("last", last);
    format!("{path}?{}", query.finish())
}

fn kind_pill(kind: &Kind) -> Markup {
    html! {
        @match kind {
            Kind::Index => span.pill.index { "index" },
            Kind::Image => span.pill.image { "image" },
            Kind::Artifact(t) => span.pill.artifact title=(t) { "artifact" },
            Kind::NotParsed => span.pill.bad { "not parsed" },
        }
    }
}

/// `/ui/repo/<name>`: a repository's tags.
pub fn tags(chrome: &Chrome, host: &str, repo: &str, list: &TagList, now_ms: u64) -> Markup {
    let body = html! {
        div.crumbs { a href="/" { "Repositories" } " / " }
        h1 { (repo) }
        p.sub { span #shown { (list.rows.len()) } " of " (list.rows.len()) @if list.more { "+" } @if list.rows.len() == 1 && !list.more { " tag" } @else { " tags" } }
        @if list.rows.len() > 8 {
            div.search { input #filter type="search" placeholder="Filter tags"; }
        }
        div.card {
            @if list.rows.is_empty() {
                div.empty { "No tags. Manifests pushed by digest only are not listed here." }
            } @else {
                table {
                    thead { tr { th { "Tag" } th { "Digest" } th { "Type" } th { "Platforms" } th.num { "Size" } th { "Pushed" } th { "Pull" } } }
                    tbody {
                        @for t in &list.rows {
                            @let href = manifest_href(repo, &t.digest.to_string());
                            tr data-name=(t.tag) {
                                td.name { a href=(href) { (t.tag) } }
                                td { a href=(href) { (digest(&t.digest.to_string())) } }
                                td.nowrap { (kind_pill(&t.kind)) br; span.muted.small { (oci::media_label(&t.media_type)) } }
                                td { @for p in &t.platforms { span.pill { (p) } } }
                                td.num { (size(t.size)) }
                                td { @match t.pushed_ms { Some(ms) => (time_cell(ms, now_ms)), None => span.muted { "—" } } }
                                td { (copy_box(&format!("docker pull {host}/{repo}:{}", t.tag))) }
                            }
                        }
                    }
                }
            }
        }
        @if list.more && let Some(last) = list.rows.last() {
            div.pages { a href=(next_href(&format!("/ui/repo/{repo}"), None, &last.tag)) { "Next page →" } }
        }
    };
    layout::page(repo, chrome, Nav::Repositories, body)
}

/// The CID of a blob, linked to the gateway when there is one.
fn cid(info: Option<&BlobInfo>) -> Markup {
    html! {
        @match info.and_then(|i| i.cid.as_ref().map(|c| (c, i.gateway.as_deref()))) {
            Some(((cid, state), gateway)) => {
                @match gateway {
                    Some(url) => a.mono.small href=(url) rel="noopener noreferrer" title={ (cid) " on the IPFS gateway" } { (layout::short_cid(cid)) },
                    None => span.mono.small title=(cid) { (layout::short_cid(cid)) },
                }
                " " (pin_pill(state))
            }
            None => span.muted { "—" },
        }
    }
}

/// A pin state as a coloured label.
pub fn pin_pill(state: &ipcr_proto::PinState) -> Markup {
    use ipcr_proto::PinState::*;
    html! {
        @match state {
            Pinned => span.pill.ok { "pinned" },
            Pending => span.pill.warn { "pending" },
            Failed { reason, attempts } => span.pill.bad title=(reason) { "failed ×" (attempts) },
            Unpinning => span.pill.warn { "unpinning" },
            Unpinned => span.pill { "unpinned" },
        }
    }
}

/// Rows of blobs (a config and layers).
fn blob_rows(descs: &[(String, &Desc)], detail: &ManifestDetail) -> Markup {
    html! {
        table {
            thead { tr { th { "" } th { "Digest" } th { "Media type" } th.num { "Size" } th.num { "Copies" } th { "IPFS CID" } } }
            tbody {
                @for (label, d) in descs {
                    @let info = detail.blobs.get(&d.digest);
                    tr {
                        td.muted.nowrap { (label) }
                        td { (digest(&d.digest)) }
                        td.wrap { (d.media_type) (descriptor_annotations(d)) }
                        td.num { (size(info.map_or(d.size, |i| i.size))) }
                        td.num title="Nodes holding the blob on disk" { @match info { Some(i) => (i.nodes), None => span.muted { "—" } } }
                        td {
                            (cid(info))
                            @if info.is_none() {
                                @if let Some(urls) = &d.urls { br; span.small.muted { "foreign: " } @for u in urls { span.small.wrap { (u) " " } } }
                                @else { " " span.small.muted { "(not in this repository)" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A descriptor's annotations, small, under another value.
fn descriptor_annotations(d: &Desc) -> Markup {
    html! {
        @if let Some(a) = &d.annotations {
            @for (k, v) in a { br; span.small.muted.any { span.mono { (k) } " = " (v) } }
        }
    }
}

/// A key/value table of annotations.
fn annotations(map: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        dl.kv { @for (k, v) in map { dt.mono { (k) } dd { (v) } } }
    }
}

/// `/ui/repo/<name>/manifest/<digest>`.
pub fn manifest(chrome: &Chrome, host: &str, repo: &str, d: &ManifestDetail, now_ms: u64) -> Markup {
    let digest_text = d.digest.to_string();
    let parsed = match &d.parsed {
        Parsed::Manifest(m) => Some(m.as_ref()),
        Parsed::NotParsed => None,
    };
    let blob_descs: Vec<(String, &Desc)> = parsed
        .map(|m| {
            let config = m.config.iter().map(|c| ("config".to_string(), c));
            let layers = m
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("layer {}", i + 1), l));
            config.chain(layers).collect()
        })
        .unwrap_or_default();
    let body = html! {
        div.crumbs { a href="/" { "Repositories" } " / " a href={ "/ui/repo/" (repo) } { (repo) } " /" }
        h1 { (repo) span.muted { "@" } span.mono title=(digest_text) { (layout::short_digest(&digest_text)) } }
        p.sub { (kind_pill(&d.kind)) " " (oci::media_label(&d.record.media_type)) " · " (human(d.total)) " in all" }
        div.card {
            dl.kv {
                dt { "Digest" } dd.mono { (digest_text) }
                dt { "Media type" } dd { (d.record.media_type) }
                dt { "Manifest size" } dd { (size(d.record.bytes.len() as u64)) }
                @if let Some(t) = parsed.and_then(|m| m.artifact_type.as_ref()) { dt { "Artifact type" } dd { (t) } }
                @if let Some(s) = parsed.and_then(|m| m.subject.as_ref()) {
                    dt { "Subject" }
                    dd { @match s.digest() { Some(sd) => (manifest_link(repo, &sd.to_string())), None => (digest(&s.digest)) } }
                }
                dt { "Tags" }
                dd {
                    @if d.tags.is_empty() { span.muted { "none" } }
                    @for (t, ms) in &d.tags { span.pill title={ "pushed " (layout::ago(now_ms.saturating_sub(*ms))) } { (t) } }
                }
                dt { "Pull" }
                dd { (copy_box(&format!("docker pull {host}/{repo}@{digest_text}"))) }
            }
        }
        @match parsed {
            None => {
                h2 { "Content" }
                div.notice { "This manifest is " b { "not parsed" } ": its bytes are not a manifest this page can read. It is served as stored." }
            }
            Some(m) => {
                @if !m.manifests.is_empty() || oci::Kind::Index == d.kind {
                    h2 { "Manifests (" (m.manifests.len()) ")" }
                    div.card { table {
                        thead { tr { th { "Platform" } th { "Digest" } th { "Media type" } th.num { "Size" } th { "Artifact type" } } }
                        tbody { @for c in &m.manifests {
                            tr {
                                td { @match c.platform() { Some(p) => span.pill { (p) }, None => span.muted { "—" } } }
                                td { @match c.digest().filter(|_| d.present.contains(&c.digest)) {
                                    Some(cd) => (manifest_link(repo, &cd.to_string())),
                                    None => { (digest(&c.digest)) " " span.small.muted { "(not in this repository)" } },
                                } }
                                td.wrap { (c.media_type) (descriptor_annotations(c)) }
                                td.num { (size(c.size)) }
                                td.wrap { @if let Some(t) = &c.artifact_type { (t) } }
                            }
                        } }
                    } }
                }
                @if !blob_descs.is_empty() {
                    h2 { "Config and layers" }
                    div.card { (blob_rows(&blob_descs, d)) }
                }
                @if let Some(a) = m.annotations.as_ref().filter(|a| !a.is_empty()) {
                    h2 { "Annotations" }
                    div.card { (annotations(a)) }
                }
            }
        }
        h2 { "Referrers (" (d.referrers.len()) ")" }
        div.card {
            @if d.referrers.is_empty() {
                div.empty { "No signatures, SBOMs or other artifacts refer to this manifest." }
            } @else {
                table {
                    thead { tr { th { "Artifact type" } th { "Digest" } th { "Media type" } th.num { "Size" } th { "Annotations" } } }
                    tbody { @for r in &d.referrers {
                        tr {
                            td.wrap { @match &r.artifact_type { Some(t) => (t), None => span.muted { "—" } } }
                            td { (manifest_link(repo, &r.digest.to_string())) }
                            td.wrap { (r.media_type) }
                            td.num { (size(r.size)) }
                            td.small.any { @if let Some(a) = &r.annotations { @for (k, v) in a { span.mono { (k) } " = " (v) br; } } }
                        }
                    } }
                }
            }
        }
        h2 { "Raw" }
        div.card { details { summary { "The manifest as stored (" (human(d.record.bytes.len() as u64)) ")" } pre { (raw_text(&d.record.bytes)) } } }
    };
    layout::page(
        &layout::short_digest(&digest_text),
        chrome,
        Nav::Repositories,
        body,
    )
}

/// The manifest's text: pretty-printed JSON when it is JSON, else the bytes as text (cut off
/// after [`RAW_SHOWN`]).
fn raw_text(bytes: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Ok(pretty) = serde_json::to_string_pretty(&v)
        && pretty.len() <= RAW_SHOWN
    {
        return pretty;
    }
    let shown = &bytes[..bytes.len().min(RAW_SHOWN)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if shown.len() < bytes.len() {
        text.push_str("\n…");
    }
    text
}

/// A page that says why there is nothing to show.
pub fn message(chrome: &Chrome, title: &str, text: &str) -> Markup {
    let body = html! {
        h1 { (title) }
        p.sub { (text) }
        p { a href="/" { "← Repositories" } }
    };
    layout::page(title, chrome, Nav::None, body)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use ipcr_proto::ManifestRecord;

    use super::*;

    fn chrome() -> Chrome {
        Chrome {
            user: Some("<b>eve</b>".into()),
            operator: true,
            node: 7,
        }
    }

    fn detail(bytes: &[u8], media_type: &str) -> ManifestDetail {
        let parsed = oci::parse(bytes);
        ManifestDetail {
            digest: ipcr_proto::Algorithm::Sha256.digest_bytes(bytes),
            kind: Kind::of(media_type, &parsed),
            record: ManifestRecord {
                media_type: media_type.into(),
                bytes: bytes.to_vec(),
                blobs: vec![],
                children: vec![],
                subject: None,
                artifact_type: None,
                annotations: BTreeMap::new(),
            },
            parsed,
            blobs: BTreeMap::new(),
            present: BTreeSet::new(),
            tags: vec![("<i>t</i>".into(), 0)],
            referrers: vec![],
            total: bytes.len() as u64,
        }
    }

    #[test]
    fn unreadable_bytes_render_as_not_parsed() {
        for bytes in [&b"\xff\xfe<script>alert(1)</script>"[..], b"{\"layers\":{}}", b""] {
            let html = manifest(&chrome(), "h\"ost", "a/b", &detail(bytes, "<x>"), 0).into_string();
            assert!(html.contains("not parsed"), "{html}");
            assert!(!html.contains("<script>alert"), "{html}");
            assert!(!html.contains("<i>t</i>") && !html.contains("<b>eve</b>") && !html.contains("<x>"));
        }
    }

    #[test]
    fn hostile_manifest_fields_are_escaped() {
        let evil = r#"<script>alert(1)</script>\" onmouseover=\"x"#;
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{evil}","artifactType":"{evil}","manifests":[{{"mediaType":"{evil}","digest":"{evil}","size":1,
            "platform":{{"os":"{evil}","architecture":"{evil}"}},"artifactType":"{evil}"}}],"annotations":{{"{evil}":"{evil}"}}}}"#
        );
        let html = manifest(
            &chrome(),
            "h",
            "a",
            &detail(bytes.as_bytes(), ipcr_proto::media::OCI_INDEX),
            0,
        )
        .into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("\" onmouseover"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
}
