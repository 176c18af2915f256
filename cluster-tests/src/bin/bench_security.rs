//! Benchmark: what TLS and authentication cost, IPCR beside distribution 2.8.2 set up the same
//! way, in the same run (not a test: it prints numbers for `docs/benchmarks.md`).
//!
//! Four setups, each on both registries: plain HTTP without auth; TLS; TLS with Basic auth
//! (htpasswd, bcrypt); TLS with Bearer tokens. The tokens come from IPCR's own token endpoint and
//! distribution verifies the very same tokens (its `rootcertbundle` holds a certificate of
//! IPCR's signing key), so both check one JWT per request.
//!
//! Measured: manifest GET by tag (`wrk -t2 -c64 -d10s`, keep-alive; with a `pull` token for
//! the one repository, as `docker pull` gets) and a 1 GiB monolithic push (`curl`, POST + PUT;
//! a `pull,push` token), the median of `--runs` pushes.
//!
//! ```console
//! $ cargo build --release -p ipcr-node -p cluster-tests
//! $ ./target/release/bench_security [--runs 3]
//! ```
//! Needs `docker-registry`, `wrk`, `curl` and `htpasswd`
//! (`apt-get install -y docker-registry wrk curl apache2-utils`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::bench::{curl, make_blob, median, push_file_with, wrk_with};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sha2::{Digest as _, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SERVICE: &str = "bench.registry";
const ISSUER: &str = "ipcr-bench";

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Plain,
    Tls,
    Basic,
    Bearer,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Plain => "plain HTTP, no auth",
            Setup::Tls => "TLS, no auth",
            Setup::Basic => "TLS + Basic (htpasswd)",
            Setup::Bearer => "TLS + Bearer token",
        }
    }

    fn tls(self) -> bool {
        self != Setup::Plain
    }
}

/// Certificates, keys and users shared by every setup.
struct Material {
    dir: PathBuf,
}

impl Material {
    fn make(dir: &Path) -> Result<Material> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf whose issuer name equals its own looks self-signed to OpenSSL.
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ipcr-bench-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let server_key = KeyPair::generate()?;
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        server_params.distinguished_name = rcgen::DistinguishedName::new();
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let server = server_params.signed_by(&server_key, &ca)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        std::fs::write(dir.join("server.pem"), server.pem())?;
        std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;
        let signing_key = KeyPair::generate()?;
        let signing_cert =
            CertificateParams::new(vec!["ipcr-token-signer".to_string()])?.self_signed(&signing_key)?;
        std::fs::write(dir.join("signing.key"), signing_key.serialize_pem())?;
        std::fs::write(dir.join("signing.pem"), signing_cert.pem())?;
        let out = Command::new("htpasswd")
            .args(["-Bbn", "bench", "bench-pw"])
            .output()
            .context("running htpasswd (apt-get install apache2-utils)")?;
        std::fs::write(dir.join("htpasswd"), out.stdout)?;
        Ok(Material {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A server process killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ipcr_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("no directory")?.join("ipcr-node");
    if !bin.exists() {
        bail!("{} is missing: cargo build --release -p ipcr-node", bin.display());
    }
    Ok(bin)
}

fn scheme(setup: Setup) -> &'static str {
    if setup.tls() { "https" } else { "http" }
}

fn start_ipcr(work: &Path, m: &Material, setup: Setup) -> Result<Server> {
    let port = free_port()?;
    let data = work.join(format!("ipcr-{port}"));
    let base = format!("{}://127.0.0.1:{port}", scheme(setup));
    let mut cmd = Command::new(ipcr_binary()?);
    cmd.arg("serve")
        .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("REGISTRY_CLUSTER_ADDR", format!("127.0.0.1:{}", free_port()?))
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &data)
        .env("REGISTRY_LOG_LEVEL", "warn")
        .env("REGISTRY_LOG_ACCESSLOG_DISABLED", "true");
    if setup.tls() {
        cmd.env("REGISTRY_HTTP_TLS_CERTIFICATE", m.path("server.pem"))
            .env("REGISTRY_HTTP_TLS_KEY", m.path("server.key"));
    }
    if matches!(setup, Setup::Basic | Setup::Bearer) {
        cmd.env("REGISTRY_AUTH_HTPASSWD_PATH", m.path("htpasswd"));
    }
    if setup == Setup::Bearer {
        cmd.env("REGISTRY_AUTH_TOKEN_REALM", format!("{base}/auth/token"))
            .env("REGISTRY_AUTH_TOKEN_SERVICE", SERVICE)
            .env("REGISTRY_AUTH_TOKEN_ISSUER", ISSUER)
            .env("REGISTRY_AUTH_TOKEN_SIGNINGKEY", m.path("signing.key"))
            .env("REGISTRY_AUTH_TOKEN_EXPIRATION", "3600");
    }
    let log = work.join(format!("ipcr-{port}.log"));
    let child = cmd
        .stdout(Stdio::null())
        .stderr(File::create(&log)?)
        .spawn()
        .context("starting ipcr-node")?;
    let server = Server { child, base };
    wait_answering(&server.base, m).with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    Ok(server)
}

/// distribution set up like `setup`; its token realm points at IPCR's endpoint (`realm`).
fn start_distribution(work: &Path, m: &Material, setup: Setup, realm: &str) -> Result<Server> {
    let port = free_port()?;
    let mut config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        work.join(format!("dist-{port}")).display()
    );
    if setup.tls() {
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            m.path("server.pem"),
            m.path("server.key")
        ));
    }
    match setup {
        Setup::Basic => config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: bench\n    path: {}\n",
            m.path("htpasswd")
        )),
        Setup::Bearer => config.push_str(&format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            m.path("signing.pem")
        )),
        _ => {}
    }
    let path = work.join(format!("dist-{port}.yml"));
    std::fs::write(&path, config)?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(File::create(work.join(format!("dist-{port}.log")))?)
        .spawn()
        .context("starting docker-registry (apt-get install docker-registry)")?;
    let server = Server {
        child,
        base: format!("{}://127.0.0.1:{port}", scheme(setup)),
    };
    wait_answering(&server.base, m)?;
    Ok(server)
}

/// Wait until `/v2/` answers at all (`200` or `401`).
fn wait_answering(base: &str, m: &Material) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok((code, _, _)) = curl(&["--cacert", &m.path("ca.pem")], &format!("{base}/v2/"))
            && (code == 200 || code == 401)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{base} did not answer within 30 s")
}

/// The curl arguments that authenticate as the bench user in `setup`.
fn credentials(setup: Setup, m: &Material, token: &str) -> Vec<String> {
    let mut args = vec!["--cacert".to_string(), m.path("ca.pem")];
    match setup {
        Setup::Basic => args.extend(["-u".to_string(), "bench:bench-pw".to_string()]),
        Setup::Bearer => args.extend(["-H".to_string(), format!("Authorization: Bearer {token}")]),
        _ => {}
    }
    args
}

fn call(args: &[String], extra: &[&str], url: &str, want: u16) -> Result<(f64, String)> {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    let (code, secs, headers) = curl(&all, url)?;
    if code != want {
        bail!("{url}: {code}, wanted {want}");
    }
    Ok((secs, headers))
}

fn upload(base: &str, args: &[String], repo: &str, file: &Path, digest: &str) -> Result<f64> {
    let _ = Command::new("sync").status();
    let started = Instant::now();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    push_file_with(&args, base, repo, file, digest)?;
    Ok(started.elapsed().as_secs_f64())
}

/// A small image tagged `latest` in `repo`; answers the manifest URL.
fn push_image(base: &str, args: &[String], work: &Path, repo: &str) -> Result<String> {
    let config = work.join("config.json");
    std::fs::write(&config, b"{}")?;
    let cd = format!("sha256:{}", hex::encode(Sha256::digest(b"{}")));
    upload(base, args, repo, &config, &cd)?;
    let manifest = work.join("manifest.json");
    std::fs::write(
        &manifest,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":2}},"layers":[]}}"#
        ),
    )?;
    let url = format!("{base}/v2/{repo}/manifests/latest");
    let m = manifest.display().to_string();
    let ct = format!("Content-Type: {MANIFEST}");
    call(args, &["-X", "PUT", "-H", &ct, "-T", &m], &url, 201)?;
    Ok(url)
}

/// A token from IPCR's endpoint for `scopes` (`&scope=...` each).
fn token(ipcr: &Server, m: &Material, scopes: &[&str]) -> Result<String> {
    let query: String = scopes.iter().map(|s| format!("&scope={s}")).collect();
    let out = Command::new("curl")
        .args(["-s", "--cacert", &m.path("ca.pem"), "-u", "bench:bench-pw"])
        .arg(format!("{}/auth/token?service={SERVICE}{query}", ipcr.base))
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("token endpoint answer")?;
    Ok(v["token"].as_str().context("no token")?.to_string())
}

/// One registry's numbers in one setup.
struct Measured {
    rps: f64,
    push: Vec<f64>,
}

/// What every measurement uses: the material, the work directory, the 1 GiB blob.
struct Load<'a> {
    m: &'a Material,
    work: &'a Path,
    blob: &'a Path,
    digest: &'a str,
    runs: usize,
}

/// Tokens as a client gets them: one for the pushes, one for the pulls (`docker pull` asks
/// for `pull` on the one repository).
#[derive(Default)]
struct Tokens {
    push: String,
    pull: String,
}

fn measure(server: &Server, setup: Setup, tokens: &Tokens, load: &Load<'_>) -> Result<Measured> {
    let Load {
        m,
        work,
        blob,
        digest,
        runs,
    } = *load;
    let args = credentials(setup, m, &tokens.push);
    let url = push_image(&server.base, &args, work, "bench")?;
    let mut wrk_args = vec!["-H".to_string(), format!("Accept: {MANIFEST}")];
    match setup {
        Setup::Basic => {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.encode("bench:bench-pw");
            wrk_args.extend(["-H".to_string(), format!("Authorization: Basic {b}")]);
        }
        Setup::Bearer => {
            wrk_args.extend(["-H".to_string(), format!("Authorization: Bearer {}", tokens.pull)])
        }
        _ => {}
    }
    let wrk_refs: Vec<&str> = wrk_args.iter().map(String::as_str).collect();
    let rps = wrk_with(&wrk_refs, &url)?;
    let mut push = Vec::new();
    for run in 0..runs {
        push.push(upload(&server.base, &args, &format!("big{run}"), blob, digest)?);
    }
    Ok(Measured { rps, push })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(3usize)
        .clamp(1, 5);
    let work = tempfile::Builder::new()
        .prefix("ipcr-bench-security-")
        .tempdir_in("/var/tmp")?;
    // IPCR_BENCH_KEEP=1 keeps the directory (logs, configurations) for a look afterwards.
    let work = if std::env::var_os("IPCR_BENCH_KEEP").is_some() {
        work.keep()
    } else {
        work.path().to_path_buf()
    };
    let work = work.as_path();
    eprintln!("work directory: {}", work.display());
    let m = Material::make(work)?;
    let blob = work.join("blob");
    eprintln!("generating a 1 GiB blob ...");
    let digest = make_blob(&blob, 0x2545_F491_4F6C_DD1D)?;

    let load = Load {
        m: &m,
        work,
        blob: &blob,
        digest: &digest,
        runs,
    };
    let setups = [Setup::Plain, Setup::Tls, Setup::Basic, Setup::Bearer];
    let mut rows = Vec::new();
    for setup in setups {
        eprintln!("{} ...", setup.name());
        let ipcr = start_ipcr(work, &m, setup)?;
        let tokens = if setup == Setup::Bearer {
            let pushes: Vec<String> = std::iter::once("bench".to_string())
                .chain((0..runs).map(|r| format!("big{r}")))
                .map(|repo| format!("repository:{repo}:pull,push"))
                .collect();
            let pushes: Vec<&str> = pushes.iter().map(String::as_str).collect();
            Tokens {
                push: token(&ipcr, &m, &pushes)?,
                pull: token(&ipcr, &m, &["repository:bench:pull"])?,
            }
        } else {
            Tokens::default()
        };
        let i = measure(&ipcr, setup, &tokens, &load)?;
        drop(ipcr);
        // IPCR's endpoint stays the realm distribution names; the token is already in hand.
        let realm = "https://127.0.0.1:1/auth/token";
        let dist = start_distribution(work, &m, setup, realm)?;
        let d = measure(&dist, setup, &tokens, &load)?;
        drop(dist);
        rows.push((setup, i, d));
    }

    println!("\n### TLS and authentication ({runs} pushes per setup, median)\n");
    println!(
        "| setup | IPCR manifest GET req/s | distribution req/s | × | IPCR 1 GiB push s | distribution push s |"
    );
    println!("|---|---|---|---|---|---|");
    for (setup, i, d) in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} |",
            setup.name(),
            i.rps,
            d.rps,
            i.rps / d.rps,
            median(&i.push),
            median(&d.push)
        );
    }
    let get = |s: Setup| rows.iter().find(|r| r.0 == s).expect("measured");
    let (plain, tls, bearer) = (get(Setup::Plain), get(Setup::Tls), get(Setup::Bearer));
    println!("\nGoals:");
    println!(
        "- manifest GET, TLS + tokens ≥ 0.7 × plain without auth: {:.2} ×",
        bearer.1.rps / plain.1.rps
    );
    println!(
        "- manifest GET, TLS + tokens ≥ 10 × distribution (same setup): {:.1} ×",
        bearer.1.rps / bearer.2.rps
    );
    println!(
        "- 1 GiB push over TLS ≥ 0.8 × plain (time plain / time TLS): {:.2} ×",
        median(&plain.1.push) / median(&tls.1.push)
    );
    Ok(())
}
