//! API tests of access control: htpasswd users with Basic auth, IPCR's own tokens, policies,
//! the catalog filter, mounts across repositories, and the spec's `401` / `403` answers.

mod common;

use std::path::Path;

use actix_web::test::TestRequest;
use base64::Engine;
use common::*;
use ipcr_auth::{AccessConfig, Action, AuthConfig, HtpasswdConfig, PolicyConfig, TokenConfig};

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

fn write_htpasswd(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let lines: String = ["alice", "bob", "root"]
        .iter()
        .map(|u| format!("{u}:{}\n", bcrypt::hash(format!("{u}-pw"), 4).unwrap()))
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

fn policies() -> AccessConfig {
    AccessConfig {
        admins: vec!["root".into()],
        groups: [("team-a".to_string(), vec!["alice".to_string()])].into(),
        policies: vec![
            PolicyConfig {
                repositories: vec!["team-a/**".into()],
                groups: vec!["team-a".into()],
                actions: vec![Action::Pull, Action::Push],
                ..Default::default()
            },
            PolicyConfig {
                repositories: vec!["public/**".into()],
                anonymous: true,
                actions: vec![Action::Pull],
                ..Default::default()
            },
        ],
    }
}

fn htpasswd_config(dir: &Path, access: Option<AccessConfig>) -> ipcr_node::config::Config {
    let mut c = test_config();
    c.auth = AuthConfig {
        htpasswd: Some(HtpasswdConfig {
            realm: "IPCR test".into(),
            path: write_htpasswd(dir),
        }),
        token: None,
        access,
    };
    c
}

fn token_config(dir: &Path) -> ipcr_node::config::Config {
    let mut c = htpasswd_config(dir, Some(policies()));
    let key = rcgen::KeyPair::generate().unwrap();
    let key_path = dir.join("signing.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    c.auth.token = Some(TokenConfig {
        realm: "https://registry.test/auth/token".into(),
        service: "registry.test".into(),
        issuer: "ipcr-test".into(),
        signingkey: Some(key_path),
        ..TokenConfig::default()
    });
    c
}

#[actix_web::test]
async fn without_credentials_every_endpoint_asks_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(htpasswd_config(dir.path(), None)).await;
    let api = Api::new(&node).await;
    let digest = sha256(b"x");
    for req in [
        TestRequest::get().uri("/v2/"),
        TestRequest::get().uri("/v2/_catalog"),
        TestRequest::get().uri("/v2/a/tags/list"),
        TestRequest::get().uri("/v2/a/manifests/latest"),
        TestRequest::put().uri("/v2/a/manifests/latest"),
        TestRequest::delete().uri(&format!("/v2/a/manifests/{digest}")),
        TestRequest::get().uri(&format!("/v2/a/blobs/{digest}")),
        TestRequest::post().uri("/v2/a/blobs/uploads/"),
        TestRequest::get().uri(&format!("/v2/a/referrers/{digest}")),
    ] {
        let resp = api.send(req).await;
        assert_eq!(
            header(&resp, "WWW-Authenticate").as_deref(),
            Some(r#"Basic realm="IPCR test""#)
        );
        must_fail(resp, 401, "UNAUTHORIZED").await;
    }
    // Wrong password, unknown user, malformed headers: 401 as well, never 400 or 500.
    for value in [
        basic("alice", "nope"),
        basic("mallory", "alice-pw"),
        "Basic !!!".into(),
        "Bearer abc".into(),
        "Negotiate xyz".into(),
        format!("Basic {}", "A".repeat(100_000)),
    ] {
        let resp = api
            .send(
                TestRequest::get()
                    .uri("/v2/")
                    .insert_header(("Authorization", value)),
            )
            .await;
        must_fail(resp, 401, "UNAUTHORIZED").await;
    }
}

/// `auth.htpasswd` without policies: distribution's behaviour.
#[actix_web::test]
async fn htpasswd_users_may_do_everything_without_policies() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(htpasswd_config(dir.path(), None)).await;
    let api = Api::new_as(&node, Some(basic("bob", "bob-pw"))).await;
    must_status(&api.get("/v2/").await, 200);
    let image = must_push_image(&api, "any/repo", "v1", "bob").await;
    must_status(&api.get("/v2/any/repo/manifests/v1").await, 200);
    must_status(
        &api.delete(&format!("/v2/any/repo/manifests/{}", image.digest))
            .await,
        202,
    );
}

#[actix_web::test]
async fn policies_decide_per_repository_and_the_catalog_shows_only_what_may_be_pulled() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(htpasswd_config(dir.path(), Some(policies()))).await;
    let alice = Api::new_as(&node, Some(basic("alice", "alice-pw"))).await;
    let bob = Api::new_as(&node, Some(basic("bob", "bob-pw"))).await;
    let root = Api::new_as(&node, Some(basic("root", "root-pw"))).await;
    let anonymous = Api::new(&node).await;

    let mine = must_push_image(&alice, "team-a/app", "v1", "a").await;
    must_push_image(&root, "public/base", "v1", "p").await;
    must_push_image(&root, "secret/stuff", "v1", "s").await;

    // Bob is authenticated but granted nothing on team-a: 403, not 401.
    must_fail(bob.get("/v2/team-a/app/manifests/v1").await, 403, "DENIED").await;
    must_fail(
        bob.send(TestRequest::post().uri("/v2/team-a/app/blobs/uploads/"))
            .await,
        403,
        "DENIED",
    )
    .await;
    // Alice may push but not delete.
    must_fail(
        alice
            .delete(&format!("/v2/team-a/app/manifests/{}", mine.digest))
            .await,
        403,
        "DENIED",
    )
    .await;
    // Public pulls need no credentials; pushes there do.
    must_status(&anonymous.get("/v2/public/base/manifests/v1").await, 200);
    must_status(&bob.get("/v2/public/base/manifests/v1").await, 200);
    must_fail(
        anonymous
            .send(TestRequest::post().uri("/v2/public/base/blobs/uploads/"))
            .await,
        401,
        "UNAUTHORIZED",
    )
    .await;

    let catalog = |v: serde_json::Value| v["repositories"].as_array().unwrap().clone();
    assert_eq!(
        catalog(json(alice.get("/v2/_catalog").await).await),
        ["public/base", "team-a/app"]
    );
    assert_eq!(
        catalog(json(bob.get("/v2/_catalog?n=1").await).await),
        ["public/base"]
    );
    assert_eq!(catalog(json(root.get("/v2/_catalog").await).await).len(), 3);
    must_fail(anonymous.get("/v2/_catalog").await, 401, "UNAUTHORIZED").await;

    // A mount from a repository alice may not pull becomes a plain upload session.
    let secret_layer = sha256(b"layer of s");
    let resp = alice
        .send(TestRequest::post().uri(&format!(
            "/v2/team-a/app/blobs/uploads/?mount={secret_layer}&from=secret/stuff"
        )))
        .await;
    must_status(&resp, 202);
    // From a repository she may pull, the mount happens.
    let public_layer = sha256(b"layer of p");
    let resp = alice
        .send(TestRequest::post().uri(&format!(
            "/v2/team-a/app/blobs/uploads/?mount={public_layer}&from=public/base"
        )))
        .await;
    must_status(&resp, 201);
}

/// IPCR as its own token server: `docker login`'s flow, tokens holding only granted scopes.
#[actix_web::test]
async fn the_token_endpoint_issues_scoped_tokens_that_the_registry_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(token_config(dir.path())).await;
    let api = Api::new(&node).await;
    let resp = api.get("/v2/").await;
    assert_eq!(
        header(&resp, "WWW-Authenticate").as_deref(),
        Some(r#"Bearer realm="https://registry.test/auth/token",service="registry.test""#)
    );
    must_fail(resp, 401, "UNAUTHORIZED").await;
    let resp = api.get("/v2/team-a/app/manifests/v1").await;
    assert!(
        header(&resp, "WWW-Authenticate")
            .unwrap()
            .ends_with(r#"scope="repository:team-a/app:pull""#)
    );

    // docker login: GET with Basic credentials.
    let token_for = |scope: &str| {
        TestRequest::get()
            .uri(&format!(
                "/auth/token?service=registry.test&scope={scope}&account=alice"
            ))
            .insert_header(("Authorization", basic("alice", "alice-pw")))
    };
    let resp = api
        .send(token_for("repository:team-a/app:pull,push,delete"))
        .await;
    must_status(&resp, 200);
    let reply = json(resp).await;
    let token = reply["token"].as_str().unwrap().to_string();
    assert_eq!(reply["access_token"], reply["token"]);
    assert!(reply["expires_in"].as_u64().unwrap() > 0);
    let as_alice = Api::new_as(&node, Some(format!("Bearer {token}"))).await;
    must_status(&as_alice.get("/v2/").await, 200);
    must_push_image(&as_alice, "team-a/app", "v1", "t").await;
    // The token does not reach another repository: 401 naming the scope it needs.
    let resp = as_alice.get("/v2/team-a/other/manifests/v1").await;
    assert!(
        header(&resp, "WWW-Authenticate")
            .unwrap()
            .ends_with(r#"scope="repository:team-a/other:pull",error="insufficient_scope""#)
    );
    must_fail(resp, 401, "UNAUTHORIZED").await;
    // Delete was asked for but not granted.
    let resp = as_alice
        .delete(&format!("/v2/team-a/app/manifests/{}", sha256(b"x")))
        .await;
    must_fail(resp, 401, "UNAUTHORIZED").await;

    // OAuth2 password grant (containerd), and a wrong password.
    let resp = api
        .send(
            TestRequest::post()
                .uri("/auth/token")
                .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                .set_payload("grant_type=password&username=alice&password=alice-pw&service=registry.test&scope=repository:team-a/app:pull"),
        )
        .await;
    must_status(&resp, 200);
    let resp = api
        .send(
            TestRequest::get()
                .uri("/auth/token")
                .insert_header(("Authorization", basic("alice", "bad"))),
        )
        .await;
    must_fail(resp, 401, "UNAUTHORIZED").await;
    // Anonymous tokens reach public repositories only; Basic works directly too.
    let resp = api
        .send(TestRequest::get().uri("/auth/token?scope=repository:team-a/app:pull"))
        .await;
    let anon = json(resp).await["token"].as_str().unwrap().to_string();
    let as_anon = Api::new_as(&node, Some(format!("Bearer {anon}"))).await;
    must_fail(
        as_anon.get("/v2/team-a/app/manifests/v1").await,
        401,
        "UNAUTHORIZED",
    )
    .await;
    let direct = Api::new_as(&node, Some(basic("alice", "alice-pw"))).await;
    must_status(&direct.get("/v2/team-a/app/manifests/v1").await, 200);
}
