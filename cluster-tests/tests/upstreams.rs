//! The control of the upstream harness ([`cluster_tests::upstream`], [`cluster_tests::seed`]):
//! real distribution 2.8.2 upstreams, seeded through skopeo, read back by skopeo and by the
//! harness's own client. Behind htpasswd, Basic challenges and the seeded digests; behind the
//! test's token server, the Bearer challenge, the token flow skopeo speaks, refused passwords,
//! and tokens that distribution refuses once they expired.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::clients::SKOPEO_TIMEOUT;
use cluster_tests::credentials::{UNAUTHORIZED, fetch_token, must_fail_saying};
use cluster_tests::seed::{
    COSIGN_SIGNATURE, EMPTY_DIGEST, NOTARY_SIGNATURE, SMALL_LAYER, Seeded, Seeder, UpstreamClient,
    challenge_params,
};
use cluster_tests::tools::{must_run, require_tool, run};
use cluster_tests::upstream::{DISTRIBUTION_LEEWAY, TokenConfig, TokenServer, Upstream};
use serde_json::Value;

const ALICE: (&str, &str) = ("alice", "alice-pw");
const REPO: &str = "team/app";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// The `WWW-Authenticate` of an anonymous `GET <base>/v2/`, which must be 401.
fn must_challenge(base: &str) -> String {
    let resp = http().get(format!("{base}/v2/")).send().expect("GET /v2/");
    assert_eq!(resp.status(), 401, "anonymous /v2/ of {base}");
    resp.headers()["www-authenticate"]
        .to_str()
        .expect("an ASCII challenge")
        .to_string()
}

/// `skopeo inspect --raw --creds` of `reference`: the manifest bytes as served.
fn skopeo_raw(skopeo: &Path, reference: &str, (user, password): (&str, &str)) -> Vec<u8> {
    let creds = format!("{user}:{password}");
    let mut cmd = Command::new(skopeo);
    cmd.args([
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
    ])
    .arg(creds)
    .arg(format!("docker://{reference}"));
    must_run(&mut cmd, SKOPEO_TIMEOUT).stdout
}

/// Seed three tags, an index and a signature of `v1` into `up` as `creds`.
fn seed_all(skopeo: &Path, up: &Upstream, creds: (&str, &str)) -> (Seeder, Seeded) {
    let seeder = Seeder::new(skopeo, up, Some(creds));
    let mut seeded = Seeded::new(REPO);
    seeder.seed_tags(&mut seeded, 3, SMALL_LAYER);
    seeder.seed_index(&mut seeded, "multi");
    seeder.seed_signature(&mut seeded, "v1", COSIGN_SIGNATURE);
    (seeder, seeded)
}

#[test]
fn htpasswd_upstream_holds_what_skopeo_seeded() {
    let (Some(skopeo), Some(mut up)) = (require_tool("skopeo"), Upstream::htpasswd(&[ALICE])) else {
        return;
    };
    let (seeder, mut seeded) = seed_all(&skopeo, &up, ALICE);
    // A second signature of `v1`: the fallback index is replaced by one listing both.
    let notary = seeder.seed_signature(&mut seeded, "v1", NOTARY_SIGNATURE);
    let (scheme, params) = challenge_params(&must_challenge(&up.base_url()));
    assert_eq!(scheme, "Basic");
    assert!(params.contains_key("realm"), "{params:?}");

    for (tag, want) in &seeded.tags {
        let raw = skopeo_raw(&skopeo, &format!("{}/{REPO}:{tag}", up.host()), ALICE);
        assert_eq!(cluster_tests::sha256_digest(&raw), want.digest, "{tag}");
    }
    let media: Vec<&str> = ["v0", "v1"]
        .iter()
        .map(|t| seeded.tags[*t].media_type.as_str())
        .collect();
    assert_eq!(
        media,
        [
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json"
        ]
    );
    assert_eq!(seeded.indexes[0].platforms.len(), 3);

    let client = UpstreamClient::new(&up, Some(ALICE));
    let sig = &seeded.signatures[0];
    let tags = client.list_tags(REPO).expect("tags/list");
    assert!(tags.contains(&sig.fallback_tag), "{tags:?}");
    let fallback: Value = serde_json::from_slice(
        &client
            .get_manifest(REPO, &sig.fallback_tag)
            .expect("fallback")
            .bytes,
    )
    .expect("a JSON index");
    assert_eq!(fallback["manifests"][0]["digest"], sig.manifest.digest.as_str());
    assert_eq!(fallback["manifests"][0]["artifactType"], COSIGN_SIGNATURE);
    assert_eq!(
        fallback["manifests"][1]["digest"],
        notary.manifest.digest.as_str()
    );
    assert_eq!(fallback["manifests"][1]["artifactType"], NOTARY_SIGNATURE);
    assert_eq!(seeded.tags[&sig.fallback_tag].digest, notary.fallback.digest);
    let signature: Value = serde_json::from_slice(
        &client
            .get_manifest(REPO, &sig.manifest.digest)
            .expect("signature")
            .bytes,
    )
    .expect("a JSON manifest");
    assert_eq!(signature["subject"]["digest"], seeded.tags["v1"].digest.as_str());
    assert_eq!(signature["config"]["digest"], EMPTY_DIGEST);
    let checked = seeded.must_be_held_by(&client, REPO);

    // Nothing lives only in memory: a killed and restarted upstream holds it all again.
    up.kill9();
    assert!(!up.is_running());
    up.restart();
    assert_eq!(seeded.must_be_held_by(&client, REPO), checked);
    let anonymous = UpstreamClient::new(&up, None);
    assert_eq!(anonymous.get_manifest(REPO, "v0").map(|_| ()), Err(401));
}

#[test]
fn token_upstream_speaks_the_flow_to_skopeo() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let server = TokenServer::start(TokenConfig {
        anonymous_pull: true,
        ..TokenConfig::users(&[ALICE])
    });
    let Some(up) = Upstream::token(&server) else {
        return;
    };
    let (scheme, params) = challenge_params(&must_challenge(&up.base_url()));
    assert_eq!(scheme, "Bearer");
    assert_eq!(params["realm"], server.realm());
    assert_eq!(params["service"], server.service());

    let (_seeder, seeded) = seed_all(&skopeo, &up, ALICE);
    assert!(server.issued() > 0, "skopeo fetched no token");
    let raw = skopeo_raw(&skopeo, &format!("{}/{REPO}:v0", up.host()), ALICE);
    assert_eq!(cluster_tests::sha256_digest(&raw), seeded.tags["v0"].digest);
    seeded.must_be_held_by(&UpstreamClient::new(&up, Some(ALICE)), REPO);

    // A wrong password is refused by the token server itself, for the harness and skopeo.
    let refused = server.refused();
    let scope = format!("repository:{REPO}:pull");
    let wrong = fetch_token(
        &http(),
        &server.realm(),
        Some((ALICE.0, "wrong")),
        server.service(),
        &scope,
    );
    assert_eq!(wrong, Err(401));
    let out = run(
        Command::new(&skopeo).args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "alice:wrong",
            &format!("docker://{}/{REPO}:v0", up.host()),
        ]),
        SKOPEO_TIMEOUT,
    );
    must_fail_saying(&out, "skopeo inspect with a wrong password", UNAUTHORIZED);
    assert!(server.refused() >= refused + 2, "refusals not counted");

    // The OAuth2 password grant answers the same tokens; other grants are refused.
    let form = |grant: &str| {
        http()
            .post(server.realm())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type={grant}&username=alice&password=alice-pw&service={}&scope=repository%3A{}%3Apull",
                server.service(),
                REPO.replace('/', "%2F")
            ))
            .send()
            .expect("POST /token")
    };
    let answer: Value = form("password").json().expect("a JSON token answer");
    let oauth = answer["access_token"].as_str().expect("an access token");
    let resp = http()
        .get(format!("{}/v2/{REPO}/tags/list", up.base_url()))
        .bearer_auth(oauth)
        .send()
        .expect("GET tags/list");
    assert_eq!(resp.status(), 200);
    assert_eq!(form("refresh_token").status(), 400);

    // Anonymous callers get pull and only pull: reads work, a manifest PUT is denied.
    let anonymous = UpstreamClient::new(&up, None);
    assert!(anonymous.get_manifest(REPO, "v1").is_ok());
    let token = fetch_token(
        &http(),
        &server.realm(),
        None,
        server.service(),
        &format!("repository:{REPO}:pull,push"),
    )
    .expect("an anonymous token");
    let (_, claims) = cluster_tests::jwt::parts(&token);
    assert_eq!(claims["access"][0]["actions"], serde_json::json!(["pull"]));
    let put = http()
        .put(format!("{}/v2/{REPO}/manifests/anonymous", up.base_url()))
        .bearer_auth(&token)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(raw)
        .send()
        .expect("PUT");
    assert_eq!(put.status(), 401);
}

#[test]
fn distribution_refuses_tokens_once_they_expired() {
    // Backdated by distribution's leeway, a token is refused `lifetime` after it was issued
    // (see `TokenConfig`): its `exp` is already 57 s past when issued.
    let lifetime = Duration::from_secs(3);
    let server = TokenServer::start(TokenConfig {
        lifetime,
        backdate_exp: DISTRIBUTION_LEEWAY,
        ..TokenConfig::users(&[ALICE])
    });
    let Some(up) = Upstream::token(&server) else {
        return;
    };
    let scope = format!("repository:{REPO}:pull");
    let url = format!("{}/v2/{REPO}/tags/list", up.base_url());
    let token =
        fetch_token(&http(), &server.realm(), Some(ALICE), server.service(), &scope).expect("a token");
    let issued = Instant::now();
    let (header, claims) = cluster_tests::jwt::parts(&token);
    assert!(header["kid"].as_str().is_some_and(|k| k.len() == 59), "{header}");
    let exp = claims["exp"].as_i64().expect("exp");
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(exp - iat, 3 - 60, "{claims}");

    let status = |t: &str| {
        http()
            .get(&url)
            .bearer_auth(t)
            .send()
            .expect("GET tags/list")
            .status()
            .as_u16()
    };
    // An unknown repository answers 404 to a valid token, 401 to a refused one.
    assert_eq!(
        status(&token),
        404,
        "a fresh token (exp 57 s ago, within the leeway)"
    );
    let deadline = issued + lifetime + Duration::from_secs(10);
    while status(&token) != 401 {
        assert!(
            Instant::now() < deadline,
            "the token still accepted {:?} after issue",
            issued.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused_after = issued.elapsed();
    assert!(
        refused_after >= lifetime - Duration::from_secs(2),
        "refused after {refused_after:?}"
    );
    let fresh =
        fetch_token(&http(), &server.realm(), Some(ALICE), server.service(), &scope).expect("a token");
    assert_eq!(status(&fresh), 404, "a fresh token after the old one expired");
}
