//! Fuzz target: the router, `route(method, path, query)`, with what a client controls.
//!
//! The first byte picks the method, the rest is the request target (`path?query`). Besides
//! not panicking, whatever routes must route again, to the same endpoint, when its values are
//! written back into the spec's canonical URL: the router must not read a request as one
//! thing and let a handler build links that mean another.

#![no_main]

use actix_web::ResponseError;
use actix_web::http::Method;
use ipcr_node::api::router::{Endpoint, route};
use libfuzzer_sys::fuzz_target;

fn method(b: u8) -> Method {
    match b % 8 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::PUT,
        3 => Method::POST,
        4 => Method::PATCH,
        5 => Method::DELETE,
        6 => Method::OPTIONS,
        _ => Method::from_bytes(b"PROPFIND").unwrap(),
    }
}

fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The endpoint's values written into the URL the spec gives for it.
fn canonical(e: &Endpoint) -> Option<(String, String)> {
    Some(match e {
        Endpoint::Base => return None,
        Endpoint::Catalog { n, last } => {
            let last = last
                .as_deref()
                .map(|l| format!("&last={}", q(l)))
                .unwrap_or_default();
            ("/v2/_catalog".into(), format!("n={n}{last}"))
        }
        Endpoint::ListTags { repo, n, last } => {
            let last = last
                .as_deref()
                .map(|l| format!("&last={}", q(l)))
                .unwrap_or_default();
            (format!("/v2/{repo}/tags/list"), format!("n={n}{last}"))
        }
        Endpoint::GetManifest { repo, reference, .. } | Endpoint::DeleteManifest { repo, reference } => {
            (format!("/v2/{repo}/manifests/{reference}"), String::new())
        }
        Endpoint::PutManifest {
            repo,
            reference,
            tags,
        } => {
            let tags: Vec<String> = tags.iter().map(|t| format!("tag={t}")).collect();
            (format!("/v2/{repo}/manifests/{reference}"), tags.join("&"))
        }
        Endpoint::GetBlob { repo, digest, .. } | Endpoint::DeleteBlob { repo, digest } => {
            (format!("/v2/{repo}/blobs/{digest}"), String::new())
        }
        Endpoint::StartUpload {
            repo,
            digest,
            mount,
            algorithm,
        } => {
            let mut query = vec![format!("digest-algorithm={}", algorithm.name())];
            if let Some(d) = digest {
                query.push(format!("digest={d}"));
            }
            if let Some((d, from)) = mount {
                query.push(format!("mount={d}"));
                if let Some(f) = from {
                    query.push(format!("from={f}"));
                }
            }
            (format!("/v2/{repo}/blobs/uploads/"), query.join("&"))
        }
        Endpoint::PatchUpload { repo, id }
        | Endpoint::GetUpload { repo, id }
        | Endpoint::DeleteUpload { repo, id } => (format!("/v2/{repo}/blobs/uploads/{id}"), String::new()),
        Endpoint::PutUpload { repo, id, digest } => (
            format!("/v2/{repo}/blobs/uploads/{id}"),
            format!("digest={digest}"),
        ),
        Endpoint::Referrers {
            repo,
            subject,
            artifact_type,
        } => {
            let query = artifact_type.as_deref().map(|a| format!("artifactType={}", q(a)));
            (
                format!("/v2/{repo}/referrers/{subject}"),
                query.unwrap_or_default(),
            )
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let m = method(m);
    let target = String::from_utf8_lossy(rest);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    match route(&m, path, query) {
        Ok(endpoint) => {
            assert!(path.starts_with("/v2"), "{path}");
            if let Some((path2, query2)) = canonical(&endpoint) {
                let again = route(&m, &path2, &query2);
                assert_eq!(
                    again.as_ref().ok(),
                    Some(&endpoint),
                    "{m} {path}?{query} -> {path2}?{query2}: {again:?}"
                );
            }
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{m} {path}?{query}: {e}");
            let _ = e.error_response();
        }
    }
});
