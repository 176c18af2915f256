//! Credentials as real clients hold them: htpasswd files made by Apache's `htpasswd -B`,
//! `docker login` in a configuration directory of the test's own (the user's
//! `~/.docker/config.json` is never touched), the test CA installed where the Docker Engine
//! looks for a registry's CA (`/etc/docker/certs.d/<host>/ca.crt`, removed again on drop, also
//! when the test fails), and tokens from IPCR's token endpoint.
//!
//! Only the TLS and access-control tests call it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::clients::{DOCKER_TIMEOUT, Docker, pushed_digest};
use crate::tools::{Output, must_run, require, run, run_with_input};

/// Create `path` holding `users` (`(name, password)`), hashed with bcrypt by the real
/// `htpasswd -B`.
pub fn must_htpasswd(htpasswd: &Path, path: &Path, users: &[(&str, &str)]) {
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new(htpasswd);
        cmd.arg(if i == 0 { "-Bbc" } else { "-Bb" })
            .arg(path)
            .args([user, password]);
        must_run(&mut cmd, Duration::from_secs(30));
    }
    let text = std::fs::read_to_string(path).expect("reading the htpasswd file");
    assert!(
        text.lines().all(|l| l.contains(":$2y$")),
        "htpasswd -B wrote non-bcrypt entries:\n{text}"
    );
}

/// What clients print when a registry refused their credentials (or asked for some).
pub const UNAUTHORIZED: &[&str] = &["unauthorized", "401", "authentication required"];

/// `out` is a failure whose output says one of `any_of` (compared in lowercase).
pub fn must_fail_saying(out: &Output, what: &str, any_of: &[&str]) {
    assert!(!out.status.success(), "{what} succeeded:\n{}", out.describe());
    let text = format!("{}{}", out.stdout_text(), out.stderr_text()).to_lowercase();
    assert!(
        any_of.iter().any(|w| text.contains(w)),
        "{what} failed, but not saying any of {any_of:?}:\n{}",
        out.describe()
    );
}

/// The docker CLI with a configuration directory of its own: what `docker login` stores stays
/// in it, and goes with it.
pub struct DockerSession {
    bin: PathBuf,
    config: tempfile::TempDir,
}

impl DockerSession {
    /// A session of the CLI at `bin`, logged in nowhere.
    pub fn new(bin: &Path) -> DockerSession {
        DockerSession {
            bin: bin.to_path_buf(),
            config: tempfile::Builder::new()
                .prefix("ipcr-docker-config-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(self.config.path());
        cmd
    }

    /// `docker <args>`, whatever its outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args), DOCKER_TIMEOUT)
    }

    /// `docker <args>`, which must succeed.
    pub fn must(&self, args: &[&str]) -> Output {
        must_run(self.cmd().args(args), DOCKER_TIMEOUT)
    }

    /// `docker login <host> -u <user> --password-stdin`, whatever its outcome.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Output {
        run_with_input(
            self.cmd().args(["login", host, "-u", user, "--password-stdin"]),
            password.as_bytes(),
            DOCKER_TIMEOUT,
        )
    }

    /// What `docker login` stored (`config.json`), empty before any login.
    pub fn stored(&self) -> String {
        std::fs::read_to_string(self.config.path().join("config.json")).unwrap_or_default()
    }
}

/// Where the Docker Engine looks for the CA of registry `host` (`ip:port`).
pub const DOCKER_CERTS_D: &str = "/etc/docker/certs.d";

/// The test CA installed as `/etc/docker/certs.d/<host>/ca.crt`; the directory is removed on
/// drop, also when the test fails.
pub struct DockerTrust {
    dir: PathBuf,
}

impl DockerTrust {
    /// Install `ca_pem` for `host`, or `None` after [`require`] skipped the test because the
    /// directory cannot be written (it fails instead under CI).
    pub fn install(host: &str, ca_pem: &str) -> Option<DockerTrust> {
        let dir = Path::new(DOCKER_CERTS_D).join(host);
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("ca.crt"), ca_pem));
        if let Err(e) = &written {
            eprintln!("writing {}/ca.crt: {e}", dir.display());
            let _ = std::fs::remove_dir_all(&dir);
        }
        require(
            "write access to /etc/docker/certs.d (run as root)",
            written.is_ok(),
        )
        .then_some(DockerTrust { dir })
    }
}

impl Drop for DockerTrust {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// An address of this host that the Docker Engine does *not* treat as an insecure registry:
/// the `docker0` bridge's IPv4 address. The engine never verifies certificates of registries
/// on `127.0.0.0/8` (its default insecure range) and never reads `certs.d` for them, so only
/// such an address proves that it trusts the test CA through `certs.d`. `None` without a
/// `docker0` bridge.
pub fn docker_verified_ip() -> Option<String> {
    crate::tools::find_on_path("ip")?;
    let out = run(
        Command::new("ip").args(["-4", "-o", "addr", "show", "dev", "docker0"]),
        Duration::from_secs(10),
    );
    let text = out.stdout_text();
    let word = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    Some(word.split('/').next()?.to_string())
}

/// A token for `scope` from the token endpoint `realm` (Docker's GET flow, Basic
/// credentials), or the HTTP status that refused it.
pub fn fetch_token(
    client: &reqwest::blocking::Client,
    realm: &str,
    credentials: Option<(&str, &str)>,
    service: &str,
    scope: &str,
) -> Result<String, u16> {
    let url = reqwest::Url::parse_with_params(realm, [("service", service), ("scope", scope)])
        .unwrap_or_else(|e| panic!("realm {realm}: {e}"));
    let mut req = client.get(url);
    if let Some((user, password)) = credentials {
        req = req.basic_auth(user, Some(password));
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("GET {realm}: {}", crate::secure::chain(&e)));
    if !resp.status().is_success() {
        return Err(resp.status().as_u16());
    }
    let body: serde_json::Value = resp.json().expect("a JSON token reply");
    Ok(body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_string())
}

/// `docker login` to `host` as a user does it the first time: refused while the Engine does not
/// trust the registry's CA (checked when `verified`: the Engine verifies that address), then
/// the CA installed in `certs.d`, a wrong password refused, the right one accepted. Answers the
/// guard that removes the CA again (keep it alive), or `None` when the test was skipped.
pub fn must_docker_login(
    session: &DockerSession,
    host: &str,
    ca_pem: &str,
    verified: bool,
    (user, password): (&str, &str),
) -> Option<DockerTrust> {
    if verified {
        let refused = session.login(host, user, password);
        must_fail_saying(
            &refused,
            "docker login before certs.d holds the CA",
            &["x509", "certificate", "unknown authority"],
        );
    }
    let trust = DockerTrust::install(host, ca_pem)?;
    let wrong = session.login(host, user, "not-the-password");
    must_fail_saying(&wrong, "docker login with a wrong password", UNAUTHORIZED);
    let login = session.login(host, user, password);
    assert!(login.status.success(), "{}", login.describe());
    Some(trust)
}

/// Build an image `FROM scratch` (busybox and `dockerfile`; `marker` makes it unique, so a
/// concurrent test's `rmi` cannot touch it), tag it `tag` and push it through `session`.
/// Answers its image id and the manifest digest the push printed.
pub fn must_build_and_push(
    docker: &mut Docker,
    session: &DockerSession,
    busybox: &Path,
    dockerfile: &str,
    marker: &str,
    tag: &str,
) -> (String, String) {
    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy(busybox, context.path().join("busybox")).expect("copying busybox");
    std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    std::fs::write(context.path().join("marker"), marker).expect("marker");
    docker.must_build(context.path(), tag);
    let id = docker.must_image_id(tag);
    docker.images.push(id.clone());
    let digest = pushed_digest(&session.must(&["push", tag]));
    (id, digest)
}

/// Remove the local image `tag`, pull it back through `session` (it must be image `id` again),
/// and run it as `container`: its output must hold `says`.
pub fn must_pull_and_run(
    docker: &mut Docker,
    session: &DockerSession,
    tag: &str,
    id: &str,
    container: &str,
    says: &str,
) {
    docker.must(&["rmi", tag]);
    assert!(!docker.has_image(id), "image {id} still present after rmi");
    docker.images.push(tag.to_string());
    session.must(&["pull", tag]);
    assert_eq!(docker.must_image_id(tag), id, "the pulled image is the built one");
    docker.containers.push(container.to_string());
    let out = docker.must(&["run", "--name", container, tag]);
    assert!(
        out.stdout_text().contains(says),
        "docker run printed:\n{}",
        out.describe()
    );
    docker.must(&["rm", container]);
}
