//! TLS clients of the tests: rustls configurations trusting a test CA (and showing a client
//! certificate when asked), blocking `reqwest` clients over them, and raw TLS connections with a
//! minimal HTTP/1.1 exchange, for what `reqwest` hides: the certificate a server shows, a
//! keep-alive connection held across a certificate rotation, malformed requests.
//!
//! Only the TLS tests and [`crate::secure`] call it. Every configuration uses the `ring`
//! provider explicitly (the workspace links two).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::pki::Leaf;

/// How long a raw connection waits for the server to read or answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting only the CAs in `ca_pems`, showing `identity` when given.
pub fn client_config(ca_pems: &[&str], identity: Option<&Leaf>) -> ClientConfig {
    client_config_with(rustls::DEFAULT_VERSIONS, ca_pems, identity)
}

/// [`client_config`] offering only `versions` (`&[&rustls::version::TLS12]`).
pub fn client_config_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    ca_pems: &[&str],
    identity: Option<&Leaf>,
) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("a CA PEM")).expect("a CA certificate");
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions the ring provider supports")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => {
            let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("cert")];
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a client certificate and its key")
        }
        None => builder.with_no_client_auth(),
    };
    // Every connection makes a full handshake: a resumed session shows no certificate, so it
    // would hide what the server presents now (after a rotation) and what it asks of clients.
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// A blocking HTTP client over `config`: no proxy, HTTP/1.1, short timeouts.
pub fn https_client(config: ClientConfig) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .http1_only()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tls_backend_preconfigured(config)
        .build()
        .expect("https client")
}

/// A TLS connection over TCP.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connect to `addr` (`ip:port`) and finish the handshake, naming the server `server_name`.
/// With TLS 1.3 a server that refuses the client's certificate says so after the client's
/// side of the handshake is done: that refusal shows on the first read, not here.
pub fn connect(addr: &str, server_name: &str, config: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    let tcp = plain_connect(addr)?;
    let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A plain TCP connection to `addr` with [`IO_TIMEOUT`] on reads and writes.
pub fn plain_connect(addr: &str) -> io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The DER of the certificate the server showed on `stream`.
pub fn peer_leaf(stream: &TlsStream) -> Vec<u8> {
    stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server showed a certificate")
        .to_vec()
}

/// An HTTP response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The header block as text (status line included).
    pub head: String,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// Write `request` (a whole HTTP/1.1 request) and read one response whose body has a
/// `Content-Length`. The connection stays usable for the next request when the server keeps it.
pub fn exchange<S: io::Read + io::Write>(stream: &mut S, request: &[u8]) -> io::Result<RawResponse> {
    stream.write_all(request)?;
    stream.flush()?;
    read_response(stream)
}

/// Read one HTTP response whose body has a `Content-Length` (none: empty).
pub fn read_response(stream: &mut impl io::Read) -> io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte up to the blank line: the body (and the next response) stay unread.
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes of a response head", buf.len()),
            ));
        }
        buf.push(byte[0]);
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("a response head over 64 KiB"));
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(RawResponse { status, head, body })
}

/// `GET <path>` on `host` as raw HTTP/1.1, keeping the connection open.
pub fn get_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ipcr-cluster-tests\r\n\r\n").into_bytes()
}

/// Read from `stream` until the peer closes it (or [`IO_TIMEOUT`] passes, an error), and
/// return what came before the close.
pub fn read_until_closed(stream: &mut impl io::Read) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// A client with `config` is refused by `addr`: at the handshake (TLS 1.2), or by the alert
/// that ends it before any answer (TLS 1.3, where the client finishes its side first). Never
/// an HTTP answer. Returns the error seen.
pub fn must_be_refused(addr: &str, config: ClientConfig, what: &str) -> String {
    let config = Arc::new(config);
    let err = match connect(addr, "127.0.0.1", &config) {
        Err(e) => e,
        Ok(mut stream) => match exchange(&mut stream, &get_request(addr, "/")) {
            Ok(r) => panic!("{what}: answered {}\n{}", r.status, r.head),
            Err(e) => e,
        },
    };
    eprintln!("{what}: refused ({err})");
    err.to_string()
}

/// Send `request` (raw bytes) on a new TLS connection: the HTTP status it got, or why the
/// connection ended without one. The server may answer (`431`) and close before it has read
/// everything, so a failed write is followed by a read all the same.
pub fn try_request(addr: &str, config: &Arc<ClientConfig>, request: &[u8]) -> Result<u16, String> {
    let mut stream = connect(addr, "127.0.0.1", config).expect("a TLS handshake");
    let written = io::Write::write_all(&mut stream, request).and_then(|()| io::Write::flush(&mut stream));
    match read_response(&mut stream) {
        Ok(r) => Ok(r.status),
        Err(e) => Err(format!("write: {written:?}, read: {e}")),
    }
}

/// What [`try_request`] got is a 4xx or a closed connection: never a 5xx, never a success.
pub fn must_refuse_politely(what: &str, outcome: Result<u16, String>) {
    match outcome {
        Ok(status) => {
            assert!(
                (400..500).contains(&status),
                "{what}: answered {status}, expected a 4xx or a closed connection"
            );
            eprintln!("{what}: answered {status}");
        }
        Err(closed) => eprintln!("{what}: connection closed ({closed})"),
    }
}

/// What a [`Watcher`] saw.
#[derive(Debug)]
pub struct Watched {
    /// Requests answered as expected.
    pub served: usize,
    /// Everything else: statuses and errors.
    pub failures: Vec<String>,
    /// The slowest answer.
    pub slowest: Duration,
}

/// A well-behaved client in a thread of its own: `GET <url>` every 20 ms, each on a new TLS
/// connection (so each one needs a fresh handshake), until [`Watcher::finish`].
pub struct Watcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Watched>,
}

impl Watcher {
    /// Start asking `url` with `config`, sending `authorization` when given, expecting 200.
    pub fn start(config: ClientConfig, url: String, authorization: Option<String>) -> Watcher {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .http1_only()
            .pool_max_idle_per_host(0)
            .timeout(IO_TIMEOUT)
            .tls_backend_preconfigured(config)
            .build()
            .expect("client");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut w = Watched {
                served: 0,
                failures: Vec::new(),
                slowest: Duration::ZERO,
            };
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let mut req = client.get(&url);
                if let Some(a) = &authorization {
                    req = req.header("Authorization", a);
                }
                match req.send() {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => w.served += 1,
                    Ok(r) => w.failures.push(format!("status {}", r.status())),
                    Err(e) => w.failures.push(crate::secure::chain(&e)),
                }
                w.slowest = w.slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            w
        });
        Watcher { stop, thread }
    }

    /// Stop and say what was seen.
    pub fn finish(self) -> Watched {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the watching client")
    }
}
