//! The frame every page shares (header with navigation, the style sheet, the script) and the
//! small pieces pages are built of: shortened digests, human sizes, times, copy buttons.
//!
//! Style and script are constants, inline, and named by hash in the page's
//! `Content-Security-Policy`: no other script runs and no inline style applies, even if some
//! client-supplied text were ever rendered unescaped. Only `ui` calls this module.

use std::sync::LazyLock;

use base64::Engine as _;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::Digest as _;

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Repositories, tags, manifests.
    Repositories,
    /// The cluster.
    Cluster,
    /// The IPFS backend.
    Ipfs,
    /// Error pages.
    None,
}

/// What the header shows of the visitor and the node.
pub struct Chrome {
    /// The logged-in user, if any.
    pub user: Option<String>,
    /// Whether the cluster and IPFS pages are open to the visitor.
    pub operator: bool,
    /// The answering node's id.
    pub node: u64,
}

const STYLE: &str = r#"
:root{--fg:#1f2328;--muted:#59636e;--bg:#f6f8fa;--card:#fff;--line:#d1d9e0;--accent:#0969da;--head:#1c2128;--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header{background:var(--head);color:#fff}
.bar{max-width:1240px;margin:0 auto;padding:0 24px;display:flex;align-items:center;gap:20px;height:56px}
.brand{font-weight:700;font-size:18px;color:#fff;letter-spacing:.5px}.brand:hover{text-decoration:none}
.brand small{font-weight:400;color:#9198a1;font-size:12px;margin-left:8px;letter-spacing:0}
nav{display:flex;gap:4px}
nav a{color:#d1d9e0;padding:6px 12px;border-radius:6px}
nav a:hover{background:rgba(255,255,255,.08);text-decoration:none}
nav a.on{color:#fff;background:rgba(255,255,255,.15)}
.who{margin-left:auto;color:#9198a1;font-size:13px}
main{max-width:1240px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px;overflow-wrap:anywhere}
h1 .mono{font-size:20px;font-weight:600}
h2{font-size:16px;margin:28px 0 10px}
.sub{color:var(--muted);margin:0 0 18px}
.crumbs{color:var(--muted);margin:0 0 6px;font-size:13px;overflow-wrap:anywhere}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow-x:auto}
table{width:100%;border-collapse:collapse}
table.fixed{table-layout:fixed}
col.w-num{width:90px}col.w-size{width:120px}col.w-time{width:280px}
th,td{padding:8px 12px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#f6f8fa;font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.4px;white-space:nowrap}
tbody tr:last-child td{border-bottom:0}
tbody tr:hover{background:#f6f8fa}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.name{font-weight:600;overflow-wrap:break-word}
.wrap{overflow-wrap:break-word;min-width:8em}
.nowrap{white-space:nowrap}
.any{overflow-wrap:anywhere;min-width:12em}
code,.mono{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,monospace;font-size:12.5px}
code.digest{background:#eff2f5;padding:1px 6px;border-radius:4px;white-space:nowrap}
.muted{color:var(--muted)}
.small{font-size:12px}
.pill{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;line-height:20px;background:#ddf4ff;color:#0550ae;margin:1px 4px 1px 0;white-space:nowrap}
.pill.index{background:#fbefff;color:#8250df}.pill.image{background:#dafbe1;color:#116329}
.pill.artifact{background:#fff8c5;color:#7d4e00}.pill.bad{background:#ffebe9;color:#a40e26}
.pill.ok{background:#dafbe1;color:#116329}.pill.warn{background:#fff8c5;color:#7d4e00}
.pull{display:flex;gap:8px;align-items:center}
.pull code{background:#1c2128;color:#e6edf3;padding:3px 8px;border-radius:6px;white-space:nowrap}
button{font:inherit;font-size:12px;padding:2px 10px;border:1px solid var(--line);border-radius:6px;background:#f6f8fa;color:var(--fg);cursor:pointer}
button:hover{background:#eaeef2}
.search{display:flex;gap:8px;margin:0 0 16px}
.search input{flex:1;padding:8px 12px;border:1px solid var(--line);border-radius:6px;font:inherit;background:#fff}
.search input:focus{outline:none;border-color:var(--accent);box-shadow:0 0 0 3px rgba(9,105,218,.15)}
.search button{font-size:14px;padding:6px 16px}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px;margin:0 0 16px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.stat .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.4px}
.stat .v{font-size:20px;font-weight:600;overflow-wrap:anywhere}
.stat .v.id{font:600 15px/30px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
span.ok{color:var(--ok)}span.bad{color:var(--bad)}span.warn{color:var(--warn)}
.empty{padding:28px;text-align:center;color:var(--muted)}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:6px 18px;margin:0;padding:14px 16px}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;overflow-wrap:anywhere}
pre{overflow:auto;max-height:520px;margin:0;padding:12px 16px;background:#f6f8fa;border-top:1px solid var(--line);font-size:12px}
details>summary{cursor:pointer;padding:10px 16px;font-weight:600}
.notice{background:#fff8c5;border:1px solid #d4a72c66;border-radius:8px;padding:12px 16px;margin:0 0 16px}
.pages{margin:12px 0;display:flex;gap:16px}
footer{max-width:1240px;margin:0 auto;padding:4px 24px 28px;color:var(--muted);font-size:12px}
"#;

const SCRIPT: &str = r#"
(function () {
  var filter = document.getElementById('filter');
  if (filter) {
    var rows = document.querySelectorAll('tr[data-name]');
    var shown = document.getElementById('shown');
    var apply = function () {
      var q = filter.value.trim().toLowerCase(), n = 0;
      rows.forEach(function (r) {
        var hit = r.getAttribute('data-name').toLowerCase().indexOf(q) >= 0;
        if (r.hidden === hit) { r.hidden = !hit; }
        if (hit) { n++; }
      });
      if (shown) { shown.textContent = String(n); }
    };
    filter.addEventListener('input', apply);
    // A value the browser kept (back, reload) filters at once.
    if (filter.value) { apply(); }
  }
  var copied = function (button) {
    var label = button.textContent;
    button.textContent = 'Copied';
    setTimeout(function () { button.textContent = label; }, 1200);
  };
  document.querySelectorAll('button[data-copy]').forEach(function (button) {
    button.addEventListener('click', function () {
      var text = button.getAttribute('data-copy');
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { copied(button); });
        return;
      }
      var area = document.createElement('textarea');
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand('copy'); copied(button); } finally { document.body.removeChild(area); }
    });
  });
})();
"#;

fn csp_hash(text: &str) -> String {
    let hash = sha2::Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(hash)
    )
}

/// The `Content-Security-Policy` of every page: nothing loads from elsewhere, and only the
/// page's own style and script apply.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; style-src {}; script-src {}; img-src 'self' data:; form-action 'self'; \
         base-uri 'none'; frame-ancestors 'none'",
        csp_hash(STYLE),
        csp_hash(SCRIPT)
    )
});

/// A whole page: `title` in the tab, `body` under the header.
pub fn page(title: &str, chrome: &Chrome, active: Nav, body: Markup) -> Markup {
    let tab = |nav: Nav, href: &str, label: &str| {
        html! { a.on[active == nav] href=(href) { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · IPCR" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    div.bar {
                        a.brand href="/" { "IPCR" small { "container registry" } }
                        nav {
                            (tab(Nav::Repositories, "/", "Repositories"))
                            @if chrome.operator {
                                (tab(Nav::Cluster, "/ui/cluster", "Cluster"))
                                (tab(Nav::Ipfs, "/ui/ipfs", "IPFS"))
                            }
                        }
                        div.who {
                            @if let Some(user) = &chrome.user { "Signed in as " b { (user) } " · " }
                            "node " (chrome.node)
                        }
                    }
                }
                main { (body) }
                footer { "Served by node " (chrome.node) ". The OCI API is under " code { "/v2/" } "." }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// `sha256:0123456789ab…`, the whole digest in the title (and selectable by copying).
pub fn digest(d: &str) -> Markup {
    html! { code.digest title=(d) { (short_digest(d)) } }
}

/// A digest shortened to its algorithm and 12 hex digits.
pub fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) if hex.chars().count() > 12 => {
            format!("{alg}:{}…", hex.chars().take(12).collect::<String>())
        }
        _ if d.chars().count() > 24 => format!("{}…", d.chars().take(24).collect::<String>()),
        _ => d.to_string(),
    }
}

/// A CID shortened to 20 characters (CIDv1 in base32 is 59), the whole CID in the title.
pub fn short_cid(cid: &str) -> String {
    if cid.chars().count() > 24 {
        format!("{}…", cid.chars().take(20).collect::<String>())
    } else {
        cid.to_string()
    }
}

/// A link to a manifest's page, labelled with its shortened digest.
pub fn manifest_link(repo: &str, d: &str) -> Markup {
    html! { a href=(manifest_href(repo, d)) { (digest(d)) } }
}

/// The URL of a manifest's page.
pub fn manifest_href(repo: &str, d: &str) -> String {
    format!("/ui/repo/{repo}/manifest/{d}")
}

/// A size in binary units, exact bytes in the title.
pub fn size(bytes: u64) -> Markup {
    html! { span title={ (bytes) " bytes" } { (human(bytes)) } }
}

/// A size in binary units (`1.5 KiB`).
pub fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// A time (ms since the epoch), and its full form for a `title`; `None` out of range.
fn instant(ms: u64) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
    let t = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    Some((t, t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
}

/// A time (ms since the epoch) in UTC, with how long ago.
pub fn time(ms: u64, now_ms: u64) -> Markup {
    let Some((t, full)) = instant(ms) else {
        return html! { span.muted { "—" } };
    };
    html! {
        span title=(full) {
            (t.format("%Y-%m-%d %H:%M:%S UTC"))
        }
        " " span.muted.small { "(" (ago(now_ms.saturating_sub(ms))) ")" }
    }
}

/// A time for a table cell: how long ago, the date in UTC under it.
pub fn time_cell(ms: u64, now_ms: u64) -> Markup {
    let Some((t, full)) = instant(ms) else {
        return html! { span.muted { "—" } };
    };
    html! {
        span.nowrap title=(full) { (ago(now_ms.saturating_sub(ms))) }
        br;
        span.muted.small.nowrap { (t.format("%Y-%m-%d %H:%M UTC")) }
    }
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 days ago`.
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A command in a dark box with a button copying it.
pub fn copy_box(command: &str) -> Markup {
    html! {
        span.pull { code { (command) } button type="button" data-copy=(command) { "Copy" } }
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_shorten_safely() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(short_digest(d), "sha256:e3b0c44298fc…");
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
        // Client-written text of any shape, multi-byte characters included, never panics.
        assert_eq!(short_digest(&"é".repeat(30)), format!("{}…", "é".repeat(24)));
        assert_eq!(short_digest(":"), ":");
        let html = digest("<script>alert(1)</script>\"").into_string();
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn sizes_and_times() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(ago(59_000), "59 s ago");
        assert_eq!(ago(3 * 86_400_000), "3 days ago");
        assert!(time(u64::MAX, 0).into_string().contains('—'));
    }

    #[test]
    fn the_policy_names_the_style_and_script() {
        assert!(CSP.contains(&csp_hash(STYLE)) && CSP.contains(&csp_hash(SCRIPT)));
        assert!(CSP.starts_with("default-src 'none'"));
    }
}
