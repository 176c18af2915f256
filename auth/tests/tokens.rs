//! Token verification and issuing against keys and certificates made here (rcgen), with every
//! kind of bad token a hostile client can send.

use std::path::Path;

use base64::Engine;
use ipcr_auth::token::libtrust_kid;
use ipcr_auth::{
    AccessConfig, Action, Auth, AuthConfig, HtpasswdConfig, Identity, Need, PolicyConfig, Refusal,
    TokenConfig,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, PublicKeyData};
use serde_json::{Value, json};

const SERVICE: &str = "registry.test";
const ISSUER: &str = "test-issuer";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn claims(access: Value) -> Value {
    json!({"iss": ISSUER, "sub": "someone", "aud": SERVICE, "exp": now() + 300, "nbf": now() - 1,
           "iat": now() - 1, "access": access})
}

fn pull(repo: &str) -> Value {
    json!([{"type": "repository", "name": repo, "actions": ["pull"]}])
}

fn sign(key: &KeyPair, header: Header, claims: &Value) -> String {
    let k = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &k).unwrap()
}

fn kid_header(key: &KeyPair) -> Header {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(libtrust_kid(&key.subject_public_key_info()));
    h
}

fn token_config(dir: &Path, bundle: &str) -> TokenConfig {
    let path = dir.join("bundle.pem");
    std::fs::write(&path, bundle).unwrap();
    TokenConfig {
        realm: "https://auth.test/token".into(),
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        rootcertbundle: Some(path),
        ..TokenConfig::default()
    }
}

fn external(config: TokenConfig) -> Auth {
    Auth::load(&AuthConfig {
        token: Some(config),
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap()
}

async fn identity(auth: &Auth, token: &str) -> Result<Identity, Refusal> {
    auth.authenticate(Some(format!("Bearer {token}").as_bytes()), None)
        .await
}

/// The token server's own certificate in the bundle, tokens naming it by libtrust `kid`
/// (docker_auth, GitLab, Harbor).
#[tokio::test]
async fn tokens_signed_by_a_bundled_key_grant_their_access_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = ca("token-server");
    let auth = external(token_config(dir.path(), &server.pem()));
    let good = sign(server.key(), kid_header(server.key()), &claims(pull("team/app")));
    let id = identity(&auth, &good).await.unwrap();
    assert!(
        auth.authorize(&id, Need::Repository("team/app", &[Action::Pull]))
            .is_ok()
    );
    assert!(auth.authorize(&id, Need::Base).is_ok());
    // Another repository, or push: 401 asking for exactly that scope.
    let Err(Refusal::Unauthorized(challenge)) =
        auth.authorize(&id, Need::Repository("other/app", &[Action::Pull, Action::Push]))
    else {
        panic!("a token for another repository must not do")
    };
    assert_eq!(
        challenge,
        r#"Bearer realm="https://auth.test/token",service="registry.test",scope="repository:other/app:pull,push",error="insufficient_scope""#
    );
    assert!(auth.authorize(&id, Need::Catalog).is_err());
    // Anonymous: challenged with the scope, no error.
    let Err(Refusal::Unauthorized(c)) = auth.authorize(
        &Identity::Anonymous,
        Need::Repository("team/app", &[Action::Pull]),
    ) else {
        panic!()
    };
    assert!(c.ends_with(r#"scope="repository:team/app:pull""#), "{c}");
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ca("token-server");
    let auth = external(token_config(dir.path(), &server.pem()));
    let header = kid_header(server.key());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(pull("a"));
        f(&mut c);
        sign(server.key(), header.clone(), &c)
    };
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let good = with(&|_| {});
    let (h, rest) = good.split_once('.').unwrap();
    let (payload, _sig) = rest.split_once('.').unwrap();
    // HMAC with the public key (as PEM and as DER) as the secret: algorithm confusion.
    let public_pem = server.key().public_key_pem();
    let hmac = |secret: &[u8]| {
        let mut hh = Header::new(Algorithm::HS256);
        hh.kid = header.kid.clone();
        jsonwebtoken::encode(&hh, &claims(pull("a")), &EncodingKey::from_secret(secret)).unwrap()
    };
    let stranger = KeyPair::generate().unwrap();
    let mut stranger_header = kid_header(&stranger);
    let bad: Vec<(&str, String)> = vec![
        ("expired", with(&|c| c["exp"] = json!(now() - 120))),
        ("not yet valid", with(&|c| c["nbf"] = json!(now() + 120))),
        ("issued in the future", with(&|c| c["iat"] = json!(now() + 120))),
        ("wrong audience", with(&|c| c["aud"] = json!("other"))),
        ("wrong issuer", with(&|c| c["iss"] = json!("other"))),
        (
            "no exp",
            with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
        ),
        (
            "tampered payload",
            format!(
                "{h}.{}.{}",
                b64(&claims(pull("b"))),
                rest.split_once('.').unwrap().1
            ),
        ),
        ("no signature", format!("{h}.{payload}.")),
        (
            "alg none",
            format!("{}.{payload}.", b64(&json!({"alg": "none", "kid": header.kid}))),
        ),
        ("hmac with the public key pem", hmac(public_pem.as_bytes())),
        (
            "hmac with the public key der",
            hmac(&server.key().subject_public_key_info()),
        ),
        (
            "unknown key",
            sign(&stranger, stranger_header.clone(), &claims(pull("a"))),
        ),
        ("stranger claims the trusted kid", {
            stranger_header.kid = header.kid.clone();
            sign(&stranger, stranger_header.clone(), &claims(pull("a")))
        }),
        ("garbage", "not-a-token".into()),
        ("empty parts", "..".into()),
    ];
    assert!(identity(&auth, &good).await.is_ok());
    let leeway = with(&|c| c["exp"] = json!(now() - 10));
    assert!(identity(&auth, &leeway).await.is_ok(), "exp within the leeway");
    for (what, token) in bad {
        match identity(&auth, &token).await {
            Err(Refusal::Unauthorized(c)) => assert!(c.contains("invalid_"), "{what}: {c}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// A token carrying its certificate chain (`x5c`) up to a bundled root.
#[tokio::test]
async fn x5c_chains_must_end_at_a_bundled_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("root");
    let auth = external(token_config(dir.path(), &root.pem()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["signer".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &root)
        .unwrap();
    let x5c = |der: &[u8]| {
        let mut h = Header::new(Algorithm::ES256);
        h.x5c = Some(vec![base64::engine::general_purpose::STANDARD.encode(der)]);
        h
    };
    let good = sign(&leaf_key, x5c(leaf.der()), &claims(pull("a")));
    let id = identity(&auth, &good).await.unwrap();
    assert!(auth.allows(&id, "a", Action::Pull));
    // The same leaf signed by another root, and a leaf whose key did not sign the token.
    let other = ca("other-root");
    let foreign = CertificateParams::new(vec!["signer".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &other)
        .unwrap();
    assert!(
        identity(&auth, &sign(&leaf_key, x5c(foreign.der()), &claims(pull("a"))))
            .await
            .is_err()
    );
    let impostor = KeyPair::generate().unwrap();
    assert!(
        identity(&auth, &sign(&impostor, x5c(leaf.der()), &claims(pull("a"))))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn jwks_keys_are_trusted_by_kid_and_symmetric_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let raw = key.public_key_raw(); // 0x04 || x || y
    let b = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": b(&raw[1..33]), "y": b(&raw[33..])}]});
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let mut config = token_config(dir.path(), "");
    config.rootcertbundle = None;
    config.jwks = Some(path.clone());
    let auth = external(config.clone());
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    assert!(identity(&auth, &sign(&key, h, &claims(pull("a")))).await.is_ok());
    std::fs::write(
        &path,
        json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}).to_string(),
    )
    .unwrap();
    let err = Auth::load(&AuthConfig {
        token: Some(config),
        ..AuthConfig::default()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("auth.token.jwks"), "{err}");
}

fn issuing(dir: &Path) -> AuthConfig {
    let key = KeyPair::generate().unwrap();
    let key_path = dir.join("signing.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let htpasswd = dir.join("htpasswd");
    let entries = ["alice", "bob"].map(|u| format!("{u}:{}\n", bcrypt::hash(format!("{u}-pw"), 4).unwrap()));
    std::fs::write(&htpasswd, entries.concat()).unwrap();
    AuthConfig {
        htpasswd: Some(HtpasswdConfig {
            realm: "r".into(),
            path: htpasswd,
        }),
        token: Some(TokenConfig {
            realm: "https://registry.test/auth/token".into(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            signingkey: Some(key_path),
            ..TokenConfig::default()
        }),
        access: Some(AccessConfig {
            admins: vec![],
            groups: Default::default(),
            policies: vec![
                PolicyConfig {
                    repositories: vec!["alice/**".into()],
                    users: vec!["alice".into()],
                    actions: vec![Action::Pull, Action::Push],
                    ..Default::default()
                },
                PolicyConfig {
                    repositories: vec!["public/*".into()],
                    anonymous: true,
                    actions: vec![Action::Pull],
                    ..Default::default()
                },
            ],
        }),
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Two nodes with the same configuration: a token one issues works on the other, holding only
/// what the policies grant its user.
#[tokio::test]
async fn issued_tokens_hold_only_granted_scopes_and_work_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = issuing(dir.path());
    let (a, b) = (
        Auth::load(&config).unwrap().unwrap(),
        Auth::load(&config).unwrap().unwrap(),
    );
    assert_eq!(a.token_path().as_deref(), Some("/auth/token"));
    let creds = basic("alice", "alice-pw");
    let scopes = vec![
        "repository:alice/app:pull,push,delete repository:bob/app:pull".to_string(),
        "registry:catalog:*".to_string(),
    ];
    let issued = a
        .issue(Some(creds.as_bytes()), None, Some(SERVICE), &scopes)
        .await
        .unwrap();
    let id = identity(&b, &issued.token).await.unwrap();
    let Identity::Token(t) = &id else { panic!() };
    assert!(t.own);
    assert_eq!(t.subject, "alice");
    assert_eq!(t.access.len(), 2, "{:?}", t.access);
    assert_eq!(t.access[0].actions, ["pull", "push"], "delete was not granted");
    assert!(
        b.authorize(&id, Need::Repository("alice/app", &[Action::Pull, Action::Push]))
            .is_ok()
    );
    assert!(
        b.authorize(&id, Need::Repository("bob/app", &[Action::Pull]))
            .is_err()
    );
    assert!(b.authorize(&id, Need::Catalog).is_ok());
    assert!(b.may_pull(&id, "alice/other"));
    assert!(!b.may_pull(&id, "bob/app"));
    // Anonymous tokens hold public pulls only; bad passwords get no token at all.
    let anon = a
        .issue(None, None, None, &["repository:public/x:pull,push".into()])
        .await
        .unwrap();
    let id = identity(&b, &anon.token).await.unwrap();
    assert!(
        b.authorize(&id, Need::Repository("public/x", &[Action::Pull]))
            .is_ok()
    );
    assert!(
        b.authorize(&id, Need::Repository("public/x", &[Action::Push]))
            .is_err()
    );
    assert!(matches!(
        a.issue(Some(basic("alice", "nope").as_bytes()), None, None, &[]).await,
        Err(Refusal::Unauthorized(c)) if c.starts_with("Basic ")
    ));
    assert!(matches!(
        a.issue(None, None, Some("another-service"), &[]).await,
        Err(Refusal::BadRequest(_))
    ));
    // Basic credentials work directly too, policies apply.
    let id = b
        .authenticate(Some(basic("bob", "bob-pw").as_bytes()), None)
        .await
        .unwrap();
    assert!(matches!(
        b.authorize(&id, Need::Repository("alice/app", &[Action::Pull])),
        Err(Refusal::Unauthorized(c)) if c.contains("insufficient_scope")
    ));
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_slowed_down() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let auth = Auth::load(&issuing(dir.path())).unwrap().unwrap();
    let (bad, bob) = (basic("alice", "wrong"), basic("bob", "bob-pw"));
    let ip = "192.0.2.7".parse().unwrap();
    // Guessing alice's password while bob logs in from the same address now and then: bob's
    // successes do not clear alice's failures.
    for _ in 0..ipcr_auth::throttle::FREE + 2 {
        assert!(auth.authenticate(Some(bad.as_bytes()), Some(ip)).await.is_err());
        assert!(auth.authenticate(Some(bob.as_bytes()), Some(ip)).await.is_ok());
    }
    let started = Instant::now();
    assert!(auth.authenticate(Some(bad.as_bytes()), Some(ip)).await.is_err());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // Bob from that address, and alice from another, are not slowed by alice's guesses.
    let started = Instant::now();
    assert!(auth.authenticate(Some(bob.as_bytes()), Some(ip)).await.is_ok());
    let good = basic("alice", "alice-pw");
    assert!(
        auth.authenticate(Some(good.as_bytes()), Some("192.0.2.8".parse().unwrap()))
            .await
            .is_ok()
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // A few guesses for each of many users from one address are slowed too.
    let sprayer = "192.0.2.9".parse().unwrap();
    for i in 0..ipcr_auth::throttle::FREE_PER_ADDRESS {
        let guess = basic(&format!("user{i}"), "password1");
        assert!(
            auth.authenticate(Some(guess.as_bytes()), Some(sprayer))
                .await
                .is_err()
        );
    }
    let started = Instant::now();
    let guess = basic("someone-else", "password1");
    assert!(
        auth.authenticate(Some(guess.as_bytes()), Some(sprayer))
            .await
            .is_err()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}
