//! Turning a request's method, path and query into a typed [`Endpoint`].
//!
//! Repository names contain slashes, so routes are recognised from the end of the path
//! (`.../blobs/uploads/<id>`, `.../manifests/<ref>`, ...) and the rest is the name, validated
//! by the spec's grammar. Everything a handler needs from the URL is parsed and validated
//! here, once; handlers never see raw strings.

use actix_web::http::Method;
use ipcr_proto::{Algorithm, Digest, ErrorCode, Reference, RepoName, Tag};
use percent_encoding::percent_decode_str;

use super::error::{ApiError, echo};

/// The largest page of tags or repositories answered at once.
pub const MAX_PAGE: usize = 10_000;

/// The most `?tag=` parameters one manifest push may carry. The `201` answers with one
/// `OCI-Tag` header per tag, and common HTTP clients (hyper, Python's `http.client`) refuse a
/// response with more than 100 headers: 64 leaves room for the reference tag, the push's own
/// headers and `http.headers`. A push above the cap is refused before its body is read.
pub const MAX_PUSH_TAGS: usize = 64;

/// Every operation of the API.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `GET /v2/`.
    Base,
    /// `GET /v2/_catalog`.
    Catalog {
        /// Page size.
        n: usize,
        /// Last repository of the previous page.
        last: Option<String>,
    },
    /// `GET /v2/<name>/tags/list`.
    ListTags {
        /// Repository.
        repo: RepoName,
        /// Page size.
        n: usize,
        /// Last tag of the previous page.
        last: Option<String>,
    },
    /// `GET` or `HEAD /v2/<name>/manifests/<reference>`.
    GetManifest {
        /// Repository.
        repo: RepoName,
        /// Tag or digest.
        reference: Reference,
        /// `HEAD`: headers only.
        head: bool,
    },
    /// `PUT /v2/<name>/manifests/<reference>[?tag=...]`.
    PutManifest {
        /// Repository.
        repo: RepoName,
        /// Tag or digest.
        reference: Reference,
        /// Extra tags from `?tag=`.
        tags: Vec<Tag>,
    },
    /// `DELETE /v2/<name>/manifests/<reference>`.
    DeleteManifest {
        /// Repository.
        repo: RepoName,
        /// Tag or digest.
        reference: Reference,
    },
    /// `GET` or `HEAD /v2/<name>/blobs/<digest>`.
    GetBlob {
        /// Repository.
        repo: RepoName,
        /// Blob.
        digest: Digest,
        /// `HEAD`: headers only.
        head: bool,
    },
    /// `DELETE /v2/<name>/blobs/<digest>`.
    DeleteBlob {
        /// Repository.
        repo: RepoName,
        /// Blob.
        digest: Digest,
    },
    /// `POST /v2/<name>/blobs/uploads/` with its variants.
    StartUpload {
        /// Repository.
        repo: RepoName,
        /// `?digest=`: monolithic push in this request.
        digest: Option<Digest>,
        /// `?mount=` and `?from=`.
        mount: Option<(Digest, Option<RepoName>)>,
        /// `?digest-algorithm=` (default sha256).
        algorithm: Algorithm,
    },
    /// `PATCH <location>`.
    PatchUpload {
        /// Repository.
        repo: RepoName,
        /// Session id.
        id: String,
    },
    /// `PUT <location>?digest=`.
    PutUpload {
        /// Repository.
        repo: RepoName,
        /// Session id.
        id: String,
        /// The whole blob's digest.
        digest: Digest,
    },
    /// `GET <location>`.
    GetUpload {
        /// Repository.
        repo: RepoName,
        /// Session id.
        id: String,
    },
    /// `DELETE <location>`.
    DeleteUpload {
        /// Repository.
        repo: RepoName,
        /// Session id.
        id: String,
    },
    /// `GET /v2/<name>/referrers/<digest>[?artifactType=]`.
    Referrers {
        /// Repository.
        repo: RepoName,
        /// Subject.
        subject: Digest,
        /// Filter.
        artifact_type: Option<String>,
    },
}

fn decode(s: &str) -> Result<String, ApiError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::new(ErrorCode::NameInvalid, "path is not valid UTF-8"))
}

fn repo(segments: &[&str]) -> Result<RepoName, ApiError> {
    let name = decode(&segments.join("/"))?;
    repo_from(&name)
}

fn digest(s: &str) -> Result<Digest, ApiError> {
    let s = decode(s)?;
    digest_of(&s)
}

fn reference(s: &str, for_write: bool) -> Result<Reference, ApiError> {
    let s = decode(s)?;
    s.parse().map_err(|e: ipcr_proto::NameError| match e {
        ipcr_proto::NameError::Digest(d) => ApiError::new(
            ErrorCode::DigestInvalid,
            format!("invalid digest `{}`: {}", echo(&s), echo(&d.to_string())),
        ),
        _ if for_write => ApiError::new(ErrorCode::ManifestInvalid, format!("invalid tag `{}`", echo(&s))),
        _ => ApiError::new(ErrorCode::ManifestUnknown, format!("invalid tag `{}`", echo(&s))),
    })
}

/// The query's pairs, percent-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn page(pairs: &[(String, String)]) -> Result<(usize, Option<String>), ApiError> {
    let n = match first(pairs, "n") {
        None | Some("") => MAX_PAGE,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::new(ErrorCode::Unsupported, "n must be a non-negative integer"))?
            .min(MAX_PAGE),
    };
    let last = first(pairs, "last").filter(|l| !l.is_empty()).map(str::to_string);
    Ok((n, last))
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::method_not_allowed(allow)
}

/// Parse a request into an endpoint.
pub fn route(method: &Method, path: &str, query: &str) -> Result<Endpoint, ApiError> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => {
            return match *method {
                Method::GET | Method::HEAD => Ok(Endpoint::Base),
                _ => Err(method_not_allowed("GET, HEAD")),
            };
        }
        Some(r) if r.starts_with('/') => &r[1..],
        _ => return Err(ApiError::not_found()),
    };
    let pairs = query_pairs(query);
    if rest == "_catalog" {
        return match *method {
            Method::GET => {
                let (n, last) = page(&pairs)?;
                Ok(Endpoint::Catalog { n, last })
            }
            _ => Err(method_not_allowed("GET")),
        };
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let at = |i: usize| if i < n { segs[i] } else { "" };

    // `<name>/blobs/uploads/` and `<name>/blobs/uploads/<id>`, or without the trailing slash.
    let upload = if n >= 3 && at(n - 3) == "blobs" && at(n - 2) == "uploads" {
        Some((&segs[..n - 3], at(n - 1)))
    } else if n >= 3 && at(n - 2) == "blobs" && at(n - 1) == "uploads" {
        Some((&segs[..n - 2], ""))
    } else {
        None
    };
    if let Some((name, id)) = upload {
        let repo = repo(name)?;
        let id = id.to_string();
        if id.is_empty() {
            if *method != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            // Query values are already percent-decoded: decoding again would read `%253A` as `:`.
            let digest = first(&pairs, "digest").map(digest_of).transpose()?;
            let mount = match first(&pairs, "mount") {
                Some(m) => {
                    let from = first(&pairs, "from").map(repo_from).transpose()?;
                    Some((digest_of(m)?, from))
                }
                None => None,
            };
            let algorithm = match first(&pairs, "digest-algorithm") {
                None => digest
                    .as_ref()
                    .map(|d| d.algorithm())
                    .unwrap_or(Algorithm::Sha256),
                Some(a) => a.parse().map_err(|e: ipcr_proto::DigestError| {
                    ApiError::new(
                        ErrorCode::DigestInvalid,
                        format!("digest-algorithm `{}`: {}", echo(a), echo(&e.to_string())),
                    )
                })?,
            };
            return Ok(Endpoint::StartUpload {
                repo,
                digest,
                mount,
                algorithm,
            });
        }
        return match *method {
            Method::PATCH => Ok(Endpoint::PatchUpload { repo, id }),
            Method::PUT => {
                let d = first(&pairs, "digest")
                    .ok_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "closing PUT needs ?digest="))?;
                Ok(Endpoint::PutUpload {
                    repo,
                    id,
                    digest: digest_of(d)?,
                })
            }
            Method::GET => Ok(Endpoint::GetUpload { repo, id }),
            Method::DELETE => Ok(Endpoint::DeleteUpload { repo, id }),
            _ => Err(method_not_allowed("PATCH, PUT, GET, DELETE")),
        };
    }

    if n >= 3 && at(n - 2) == "tags" && at(n - 1) == "list" {
        let repo = repo(&segs[..n - 2])?;
        return match *method {
            Method::GET => {
                let (n, last) = page(&pairs)?;
                Ok(Endpoint::ListTags { repo, n, last })
            }
            _ => Err(method_not_allowed("GET")),
        };
    }

    if n < 2 {
        return Err(ApiError::not_found());
    }
    let (name, kind, last) = (&segs[..n - 2], at(n - 2), at(n - 1));
    match kind {
        "blobs" => {
            let repo = repo(name)?;
            let digest = digest(last)?;
            match *method {
                Method::GET | Method::HEAD => Ok(Endpoint::GetBlob {
                    repo,
                    digest,
                    head: *method == Method::HEAD,
                }),
                Method::DELETE => Ok(Endpoint::DeleteBlob { repo, digest }),
                _ => Err(method_not_allowed("GET, HEAD, DELETE")),
            }
        }
        "manifests" => {
            let repo = repo(name)?;
            match *method {
                Method::GET | Method::HEAD => Ok(Endpoint::GetManifest {
                    repo,
                    reference: reference(last, false)?,
                    head: *method == Method::HEAD,
                }),
                Method::PUT => {
                    let given = pairs.iter().filter(|(k, _)| k == "tag").count();
                    if given > MAX_PUSH_TAGS {
                        return Err(ApiError::new(
                            ErrorCode::ManifestInvalid,
                            format!(
                                "too many tags: {given} `tag` parameters, at most {MAX_PUSH_TAGS} per push"
                            ),
                        )
                        .with_detail(serde_json::json!({ "tags": given, "limit": MAX_PUSH_TAGS })));
                    }
                    let tags = pairs
                        .iter()
                        .filter(|(k, _)| k == "tag")
                        .map(|(_, v)| {
                            v.parse::<Tag>().map_err(|_| {
                                ApiError::new(
                                    ErrorCode::ManifestInvalid,
                                    format!("invalid tag `{}`", echo(v)),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Endpoint::PutManifest {
                        repo,
                        reference: reference(last, true)?,
                        tags,
                    })
                }
                Method::DELETE => Ok(Endpoint::DeleteManifest {
                    repo,
                    reference: reference(last, false)?,
                }),
                _ => Err(method_not_allowed("GET, HEAD, PUT, DELETE")),
            }
        }
        "referrers" => {
            let repo = repo(name)?;
            match *method {
                Method::GET => Ok(Endpoint::Referrers {
                    repo,
                    subject: digest(last)?,
                    artifact_type: first(&pairs, "artifactType")
                        .filter(|a| !a.is_empty())
                        .map(str::to_string),
                }),
                _ => Err(method_not_allowed("GET")),
            }
        }
        _ => Err(ApiError::not_found()),
    }
}

fn repo_from(name: &str) -> Result<RepoName, ApiError> {
    name.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::NameInvalid,
            format!("invalid repository name `{}`", echo(name)),
        )
    })
}

fn digest_of(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e: ipcr_proto::DigestError| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            format!("invalid digest `{}`: {}", echo(s), echo(&e.to_string())),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(method: Method, path: &str, query: &str) -> Endpoint {
        route(&method, path, query).unwrap_or_else(|e| panic!("{method} {path}?{query}: {e:?}"))
    }

    fn code(method: Method, path: &str, query: &str) -> ErrorCode {
        route(&method, path, query).unwrap_err().code
    }

    #[test]
    fn base_and_catalog() {
        assert_eq!(ok(Method::GET, "/v2/", ""), Endpoint::Base);
        assert_eq!(ok(Method::GET, "/v2", ""), Endpoint::Base);
        assert_eq!(
            ok(Method::GET, "/v2/_catalog", "n=2&last=b"),
            Endpoint::Catalog {
                n: 2,
                last: Some("b".into())
            }
        );
    }

    #[test]
    fn nested_names_and_keyword_components() {
        match ok(Method::GET, "/v2/a/b/c/d/manifests/latest", "") {
            Endpoint::GetManifest {
                repo,
                reference,
                head,
            } => {
                assert_eq!(repo.as_str(), "a/b/c/d");
                assert_eq!(reference.to_string(), "latest");
                assert!(!head);
            }
            other => panic!("{other:?}"),
        }
        match ok(Method::HEAD, &format!("/v2/x/blobs/y/blobs/{D}"), "") {
            Endpoint::GetBlob { repo, head, .. } => {
                assert_eq!(repo.as_str(), "x/blobs/y");
                assert!(head);
            }
            other => panic!("{other:?}"),
        }
        match ok(Method::GET, "/v2/org/manifests/tags/list", "") {
            Endpoint::ListTags { repo, n, last } => {
                assert_eq!(repo.as_str(), "org/manifests");
                assert_eq!((n, last), (MAX_PAGE, None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upload_routes() {
        let start = ok(Method::POST, "/v2/r/blobs/uploads/", "");
        assert!(matches!(
            start,
            Endpoint::StartUpload {
                digest: None,
                mount: None,
                algorithm: Algorithm::Sha256,
                ..
            }
        ));
        assert!(matches!(
            ok(Method::POST, "/v2/r/blobs/uploads", ""),
            Endpoint::StartUpload { .. }
        ));
        let mono = ok(Method::POST, "/v2/r/blobs/uploads/", &format!("digest={D}"));
        assert!(matches!(mono, Endpoint::StartUpload { digest: Some(_), .. }));
        let mount = ok(
            Method::POST,
            "/v2/r/blobs/uploads/",
            &format!("mount={D}&from=other/repo"),
        );
        match mount {
            Endpoint::StartUpload {
                mount: Some((_, Some(from))),
                ..
            } => assert_eq!(from.as_str(), "other/repo"),
            other => panic!("{other:?}"),
        }
        let sha512 = ok(Method::POST, "/v2/r/blobs/uploads/", "digest-algorithm=sha512");
        assert!(matches!(
            sha512,
            Endpoint::StartUpload {
                algorithm: Algorithm::Sha512,
                ..
            }
        ));
        let id = "6a6b2b1e-2b9b-4b7e-9d55-7a0a7c3a8f10";
        assert!(matches!(
            ok(Method::PATCH, &format!("/v2/r/blobs/uploads/{id}"), ""),
            Endpoint::PatchUpload { .. }
        ));
        assert!(matches!(
            ok(
                Method::PUT,
                &format!("/v2/r/blobs/uploads/{id}"),
                &format!("digest={}", D.replace(':', "%3A"))
            ),
            Endpoint::PutUpload { .. }
        ));
        assert!(matches!(
            ok(Method::GET, &format!("/v2/r/blobs/uploads/{id}"), ""),
            Endpoint::GetUpload { .. }
        ));
        assert!(matches!(
            ok(Method::DELETE, &format!("/v2/r/blobs/uploads/{id}"), ""),
            Endpoint::DeleteUpload { .. }
        ));
        assert_eq!(
            code(Method::PUT, &format!("/v2/r/blobs/uploads/{id}"), ""),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code(Method::POST, "/v2/r/blobs/uploads/", "digest-algorithm=md5"),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code(Method::POST, "/v2/r/blobs/uploads/", "mount=sha256:zz&from=x"),
            ErrorCode::DigestInvalid
        );
    }

    #[test]
    fn manifests_with_tags_and_digests() {
        match ok(Method::PUT, &format!("/v2/r/manifests/{D}"), "tag=a&tag=b") {
            Endpoint::PutManifest { reference, tags, .. } => {
                assert!(matches!(reference, Reference::Digest(_)));
                assert_eq!(tags.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(Method::PUT, "/v2/r/manifests/bad%2Ftag", ""),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            code(Method::PUT, &format!("/v2/r/manifests/{D}"), "tag=.bad"),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/r/manifests/sha256:abc", ""),
            ErrorCode::DigestInvalid
        );
        assert!(matches!(
            ok(Method::DELETE, "/v2/r/manifests/v1", ""),
            Endpoint::DeleteManifest { .. }
        ));
        match ok(
            Method::GET,
            &format!("/v2/r/referrers/{D}"),
            "artifactType=application%2Fx",
        ) {
            Endpoint::Referrers { artifact_type, .. } => {
                assert_eq!(artifact_type.as_deref(), Some("application/x"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        assert_eq!(
            code(Method::GET, "/v2/UPPER/tags/list", ""),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/../b/manifests/x", ""),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/sha256:..%2F..%2Fetc", ""),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/tags/list", "n=-1"),
            ErrorCode::Unsupported
        );
        assert_eq!(
            code(Method::POST, "/v2/a/manifests/x", ""),
            ErrorCode::Unsupported
        );
        assert_eq!(
            code(Method::GET, "/v2/a/something/else", ""),
            ErrorCode::Unsupported
        );
        assert_eq!(
            route(&Method::GET, "/v2/a/something/else", "")
                .unwrap_err()
                .status
                .as_u16(),
            404
        );
        assert_eq!(
            route(&Method::GET, "/other", "").unwrap_err().status.as_u16(),
            404
        );
        assert_eq!(
            route(&Method::POST, "/v2/a/blobs/x", "")
                .unwrap_err()
                .status
                .as_u16(),
            400
        );
    }

    #[test]
    fn tags_per_push_are_capped() {
        let query = |n: usize| (0..n).map(|i| format!("tag=t{i}")).collect::<Vec<_>>().join("&");
        match ok(
            Method::PUT,
            &format!("/v2/r/manifests/{D}"),
            &query(MAX_PUSH_TAGS),
        ) {
            Endpoint::PutManifest { tags, .. } => assert_eq!(tags.len(), MAX_PUSH_TAGS),
            other => panic!("{other:?}"),
        }
        // Counted as given: repeats count too, and the cap comes before any tag is parsed.
        for q in [
            query(MAX_PUSH_TAGS + 1),
            "tag=a&".repeat(6_000),
            "tag=.bad&".repeat(6_000),
        ] {
            let e = route(&Method::PUT, &format!("/v2/r/manifests/{D}"), &q).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (400, ErrorCode::ManifestInvalid));
            assert_eq!(e.detail["limit"], MAX_PUSH_TAGS);
        }
    }

    #[test]
    fn errors_quote_only_a_prefix_of_the_input() {
        let long = "a".repeat(10_000);
        let cases = [
            route(&Method::GET, &format!("/v2/{long}/tags/list"), ""),
            route(&Method::GET, &format!("/v2/r/blobs/sha256:{long}"), ""),
            route(&Method::GET, &format!("/v2/r/blobs/{long}:{long}"), ""),
            route(&Method::GET, &format!("/v2/r/manifests/{long}"), ""),
            route(
                &Method::PUT,
                &format!("/v2/r/manifests/{D}"),
                &format!("tag=.{long}"),
            ),
            route(
                &Method::POST,
                "/v2/r/blobs/uploads/",
                &format!("digest-algorithm={long}"),
            ),
            route(
                &Method::POST,
                "/v2/r/blobs/uploads/",
                &format!("mount={long}&from=x"),
            ),
            route(
                &Method::POST,
                "/v2/r/blobs/uploads/",
                &format!("mount={D}&from={long}"),
            ),
        ];
        for case in cases {
            let e = case.unwrap_err();
            assert!(e.message.len() < 200, "{} bytes: {}", e.message.len(), e.message);
            assert!(e.message.contains('…'), "{}", e.message);
        }
    }
}
