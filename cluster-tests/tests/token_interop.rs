//! IPCR's tokens and distribution's: the tokens IPCR's token endpoint issues are accepted by
//! distribution 2.8.2 (Debian's `docker-registry`) configured with `auth.token.rootcertbundle`
//! holding a certificate of IPCR's signing key, and both registries challenge alike. This pins
//! the wire format that external token servers (docker_auth, GitLab, Harbor) share with
//! distribution: the libtrust `kid`, the `access` claim, the challenge's parameters.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_tests::node::{Node, free_port};
use cluster_tests::tools::require_tool;
use sha2::{Digest as _, Sha256};

const SERVICE: &str = "interop.test";
const ISSUER: &str = "ipcr-interop";

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn distribution_accepts_ipcr_tokens_and_challenges_alike() {
    if require_tool("docker-registry").is_none() || require_tool("htpasswd").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ipcr-token-signer".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (key_path, cert_path) = (dir.path().join("signing.key"), dir.path().join("signing.pem"));
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "alice", "alice-pw"])
        .output()
        .unwrap();
    std::fs::write(&htpasswd, out.stdout).unwrap();

    // The realm is a fixed string: both registries name it in their challenges, and IPCR
    // serves its path (`/token`).
    let realm = "https://auth.interop.test/token";
    let (key_s, htpasswd_s) = (key_path.display().to_string(), htpasswd.display().to_string());
    let ipcr = Node::start_with_env(
        "ipcr",
        &[
            ("REGISTRY_AUTH_HTPASSWD_PATH", &htpasswd_s),
            ("REGISTRY_AUTH_TOKEN_REALM", realm),
            ("REGISTRY_AUTH_TOKEN_SERVICE", SERVICE),
            ("REGISTRY_AUTH_TOKEN_ISSUER", ISSUER),
            ("REGISTRY_AUTH_TOKEN_SIGNINGKEY", &key_s),
        ],
    );
    let port = free_port();
    let config = dir.path().join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            dir.path().join("dist").display(),
            cert_path.display()
        ),
    )
    .unwrap();
    let _dist = Kill(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dist = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{dist}/v2/")).send().is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The same request gets the same challenge from both.
    let challenge = |base: &str| {
        let resp = http
            .get(format!("{base}/v2/team/app/manifests/v1"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401);
        resp.headers()["www-authenticate"].to_str().unwrap().to_string()
    };
    assert_eq!(challenge(&ipcr.base_url()), challenge(&dist));

    let token = |scope: &str| -> String {
        let resp = http
            .get(format!(
                "{}/token?service={SERVICE}&scope={scope}",
                ipcr.base_url()
            ))
            .basic_auth("alice", Some("alice-pw"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<serde_json::Value>().unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let push = token("repository:team/app:pull,push");
    // distribution takes IPCR's token for a whole push: blob and manifest.
    let config_blob = b"{}";
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(config_blob)));
    let resp = http
        .post(format!("{dist}/v2/team/app/blobs/uploads/"))
        .bearer_auth(&push)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().unwrap_or_default());
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{dist}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{location}{sep}digest={digest}"))
        .bearer_auth(&push)
        .header("Content-Type", "application/octet-stream")
        .body(config_blob.to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap_or_default());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":2}},"layers":[]}}"#
    );
    let resp = http
        .put(format!("{dist}/v2/team/app/manifests/v1"))
        .bearer_auth(&push)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    // And refuses it where it grants nothing, as IPCR does.
    for base in [dist.as_str(), ipcr.base_url().as_str()] {
        let resp = http
            .get(format!("{base}/v2/other/app/manifests/v1"))
            .bearer_auth(&push)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401, "{base}");
        let c = resp.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(c.contains(r#"scope="repository:other/app:pull""#), "{base}: {c}");
    }
}
