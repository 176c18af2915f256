//! Property tests of what a hostile client controls in authentication: the `Authorization`
//! header, JWTs (header, claims, signature), and token requests' scopes. Nothing panics,
//! nothing unsigned or mis-signed is ever accepted, and what is accepted grants no more than
//! it says. Bounded to [`CASES`] cases a property; `PROPTEST_CASES` overrides it for longer
//! runs (docs/fuzzing.md).

use base64::Engine;
use ipcr_auth::header::{Credentials, parse};
use ipcr_auth::token::libtrust_kid;
use ipcr_auth::{Action, Auth, AuthConfig, Identity, Need, TokenConfig};
use proptest::prelude::*;
use rcgen::{KeyPair, PublicKeyData};

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An Auth trusting one P-256 key (by libtrust kid), and that key.
fn auth() -> (Auth, KeyPair, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["signer".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, cert.pem()).unwrap();
    let auth = Auth::load(&AuthConfig {
        token: Some(TokenConfig {
            realm: "https://a.test/token".into(),
            service: "svc".into(),
            issuer: "iss".into(),
            rootcertbundle: Some(bundle),
            ..TokenConfig::default()
        }),
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap();
    (auth, key, dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes never panic, and whatever parses as Basic prints back to a value that
    /// parses the same.
    #[test]
    fn authorization_headers_never_panic(value in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some(Credentials::Basic { user, password }) = parse(&value) {
            let again = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            prop_assert_eq!(parse(again.as_bytes()), Some(Credentials::Basic { user, password }));
        }
    }

    /// Any user and password (colons, unicode) survive the Basic encoding.
    #[test]
    fn basic_credentials_round_trip(user in "[^:\\x00]{1,40}", password in "\\PC{0,60}") {
        let value = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        prop_assert_eq!(parse(value.as_bytes()), Some(Credentials::Basic { user, password }));
    }

    /// Tokens built from arbitrary headers, claims and signatures around the trusted kid are
    /// refused, unless they are exactly a signature by the trusted key over what they carry.
    #[test]
    fn forged_tokens_are_refused(
        alg in prop_oneof![
            Just("none".to_string()),
            Just("HS256".to_string()),
            Just("ES256".to_string()),
            Just("RS256".to_string()),
            Just("EdDSA".to_string()),
            "[A-Za-z0-9]{0,8}",
        ],
        claims in proptest::collection::vec(any::<u8>(), 0..200),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
        extra in "[a-z]{0,6}",
    ) {
        let (auth, key, _dir) = auth();
        let kid = libtrust_kid(&key.subject_public_key_info());
        let header = format!(r#"{{"alg":"{alg}","kid":"{kid}","{extra}":1}}"#);
        let token = format!("{}.{}.{}", b64(header.as_bytes()), b64(&claims), b64(&signature));
        let rt = runtime();
        let got = rt.block_on(auth.authenticate(Some(format!("Bearer {token}").as_bytes()), None));
        prop_assert!(got.is_err(), "accepted a forged token: {token}");
    }

    /// Valid tokens grant exactly their access claim: an arbitrary repository name outside it
    /// is refused, whatever the requested actions.
    #[test]
    fn valid_tokens_grant_only_their_claims(
        granted in "[a-z0-9]{1,10}(/[a-z0-9]{1,10}){0,2}",
        other in "[a-z0-9]{1,10}(/[a-z0-9]{1,10}){0,2}",
        actions in proptest::sample::subsequence(vec!["pull", "push", "delete"], 0..=3),
    ) {
        let (auth, key, _dir) = auth();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(libtrust_kid(&key.subject_public_key_info()));
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({"iss": "iss", "aud": "svc", "exp": now + 60,
            "access": [{"type": "repository", "name": granted, "actions": actions}]});
        let k = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&h, &claims, &k).unwrap();
        let rt = runtime();
        let id = rt.block_on(auth.authenticate(Some(format!("Bearer {token}").as_bytes()), None)).unwrap();
        prop_assert!(matches!(id, Identity::Token(_)));
        for (action, name) in [(Action::Pull, "pull"), (Action::Push, "push"), (Action::Delete, "delete")] {
            prop_assert_eq!(auth.allows(&id, &granted, action), actions.contains(&name));
            if other != granted {
                prop_assert!(!auth.allows(&id, &other, action));
                prop_assert!(auth.authorize(&id, Need::Repository(&other, &[action])).is_err());
            }
        }
    }
}
