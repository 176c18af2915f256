//! A stand-in for an Estuary pinning service (which shut down in 2023) and for the part of a
//! Kubo node's RPC API that IPCR's `ipfs` backend uses, for tests and benchmarks on loopback.
//!
//! It follows Estuary's own handlers: `POST /content/add` (bearer auth, multipart field
//! `data`, the filename as the content's name) answering `{cid, retrieval_url, estuaryId,
//! providers}`; `GET /pinning/pins`; `DELETE /pinning/pins/<requestid>`;
//! `GET /content/by-cid/<cid>`; `GET /viewer`; the gateway
//! `GET /gw/ipfs/<cid>` with ranges; errors as `{"error":{"code","reason","details"}}` with
//! Estuary's reasons. Kubo's side: `POST /api/v0/add`, `cat`, `pin/ls`, `pin/rm`, `version`.
//! CIDs are computed like the real importers (CIDv1, raw leaves, 1 MiB chunks, balanced
//! layout; 1024 links per node for Estuary, Kubo's 174 unless `max-file-links` says
//! otherwise), so they agree with `shared/vectors/ipfs-cids.tsv`.
//!
//! Faults on demand, for the tests (`POST /_emulator/mode?set=`): `ok`, `refuse` (every API
//! call fails with a 500), `hang` (requests never get an answer), `wrong-cid` (adds answer a
//! CID of other bytes), `corrupt` (the gateway and `cat` flip a byte of what they send).
//! `GET /_emulator/stats` counts calls. Content survives a restart on the same directory.
//!
//! ```text
//! estuary-emulator --dir DIR [--addr 127.0.0.1:0] [--token ESTxxxxARY]...
//! ```
//! prints `listening on http://ADDR` once it accepts connections.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures::StreamExt as _;
use ipcr_proto::cid::{CHUNK, ESTUARY_LINKS, KUBO_LINKS, Leaf, canonical, file_cid};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Refuse,
    Hang,
    WrongCid,
    Corrupt,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "ok" => Mode::Ok,
            "refuse" => Mode::Refuse,
            "hang" => Mode::Hang,
            "wrong-cid" => Mode::WrongCid,
            "corrupt" => Mode::Corrupt,
            _ => return None,
        })
    }
}

/// What the service knows about one piece of content (a sidecar file next to its bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Content {
    id: u64,
    cid: String,
    name: String,
    size: u64,
    created: String,
}

struct State {
    dir: PathBuf,
    tokens: Vec<String>,
    mode: Mutex<Mode>,
    next_id: AtomicU64,
    /// Every add is its own content (as in Estuary), by id; the bytes are stored once per CID.
    contents: Mutex<BTreeMap<u64, Content>>,
    adds: AtomicU64,
    reads: AtomicU64,
}

impl State {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    fn bytes_path(&self, cid: &str) -> PathBuf {
        self.dir.join("content").join(cid)
    }

    /// The size of the content with `cid`, if any add stored it.
    fn size_of(&self, cid: &str) -> Option<u64> {
        self.contents
            .lock()
            .unwrap()
            .values()
            .find(|c| c.cid == cid)
            .map(|c| c.size)
    }
}

/// An error answer in Estuary's terms, built into a response at the end.
struct Refusal {
    status: u16,
    reason: &'static str,
    details: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, details: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            details: details.into(),
        }
    }

    fn response(&self) -> HttpResponse {
        estuary_error(self.status, self.reason, &self.details)
    }
}

/// Estuary's error envelope.
fn estuary_error(status: u16, reason: &str, details: &str) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status).unwrap();
    HttpResponse::build(code).json(json!({"error": {"code": status, "reason": reason, "details": details}}))
}

/// Kubo's error envelope.
fn kubo_error(message: &str) -> HttpResponse {
    HttpResponse::InternalServerError().json(json!({"Message": message, "Code": 0, "Type": "error"}))
}

/// Estuary's bearer-token check (`util.ExtractAuth` and the token lookup).
fn check_auth(state: &State, req: &HttpRequest) -> Result<(), Refusal> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.is_empty() || auth == "undefined" {
        return Err(Refusal::new(401, "ERR_AUTH_MISSING", "no api key was specified"));
    }
    let parts: Vec<&str> = auth.split(' ').collect();
    if parts[0] != "Bearer" {
        return Err(Refusal::new(
            401,
            "ERR_AUTH_MISSING_BEARER",
            "Unsupported authorization scheme: Bearer is a required prefix.",
        ));
    }
    if parts.len() != 2 || parts[1].is_empty() {
        return Err(Refusal::new(
            401,
            "ERR_INVALID_AUTH",
            "Invalid Auth: An Invalid API Key was specified.",
        ));
    }
    if !state.tokens.iter().any(|t| t == parts[1]) {
        return Err(Refusal::new(401, "ERR_INVALID_TOKEN", "api key does not exist"));
    }
    Ok(())
}

/// Apply the fault mode to an API call: `Some` is the answer to give instead.
async fn fault(state: &State) -> Option<HttpResponse> {
    match state.mode() {
        Mode::Refuse => Some(estuary_error(500, "Internal Server Error", "emulated outage")),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Some(estuary_error(504, "Gateway Timeout", "emulated hang"))
        }
        _ => None,
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Receive one multipart field into the content store, computing its CID on the way.
async fn receive(
    state: &State,
    mut payload: Multipart,
    field_name: &str,
    max_links: u32,
) -> Result<Content, Refusal> {
    while let Some(field) = payload.next().await {
        let mut field = field.map_err(|e| Refusal::new(400, "ERR_INVALID_INPUT", e.to_string()))?;
        if field.name() != Some(field_name) {
            continue;
        }
        let name = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .unwrap_or("")
            .to_string();
        let tmp = state
            .dir
            .join(format!("upload-{}", state.next_id.fetch_add(1, Ordering::SeqCst)));
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| Refusal::new(500, "ERR_INTERNAL", e.to_string()))?;
        let mut leaves = Vec::new();
        let mut buf = Vec::with_capacity(CHUNK as usize);
        let mut size = 0u64;
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| Refusal::new(400, "ERR_INVALID_INPUT", e.to_string()))?;
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .map_err(|e| Refusal::new(500, "ERR_INTERNAL", e.to_string()))?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = (CHUNK as usize - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == CHUNK as usize {
                    leaves.push(Leaf::of(&buf));
                    buf.clear();
                }
            }
        }
        if !buf.is_empty() {
            leaves.push(Leaf::of(&buf));
        }
        file.sync_all().ok();
        let cid = file_cid(&leaves, max_links);
        std::fs::rename(&tmp, state.bytes_path(&cid))
            .map_err(|e| Refusal::new(500, "ERR_INTERNAL", e.to_string()))?;
        let content = Content {
            id: state.next_id.fetch_add(1, Ordering::SeqCst),
            cid: cid.clone(),
            name,
            size,
            created: now_rfc3339(),
        };
        let meta = serde_json::to_vec(&content).unwrap();
        std::fs::write(state.dir.join("meta").join(content.id.to_string()), meta).ok();
        state.contents.lock().unwrap().insert(content.id, content.clone());
        state.adds.fetch_add(1, Ordering::SeqCst);
        return Ok(content);
    }
    Err(Refusal::new(
        400,
        "ERR_INVALID_INPUT",
        format!("no multipart field named {field_name:?}"),
    ))
}

/// A CID of other bytes, for the `wrong-cid` fault.
fn other_cid(cid: &str) -> String {
    file_cid(&[Leaf::of(cid.as_bytes())], ESTUARY_LINKS)
}

async fn content_add(state: web::Data<State>, req: HttpRequest, payload: Multipart) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    if let Err(r) = check_auth(&state, &req) {
        return r.response();
    }
    let content = match receive(&state, payload, "data", ESTUARY_LINKS).await {
        Ok(c) => c,
        Err(r) => return r.response(),
    };
    let cid = if state.mode() == Mode::WrongCid {
        other_cid(&content.cid)
    } else {
        content.cid.clone()
    };
    let host = req.connection_info().host().to_string();
    HttpResponse::Ok().json(json!({
        "cid": cid,
        "retrieval_url": format!("http://{host}/gw/ipfs/{cid}"),
        "estuaryId": content.id,
        "providers": [format!("/ip4/127.0.0.1/tcp/6744/p2p/12D3KooWEmulator{}", content.id)],
    }))
}

fn pin_status(c: &Content) -> serde_json::Value {
    json!({
        "requestid": c.id.to_string(),
        "status": "pinned",
        "created": c.created,
        "pin": {"cid": c.cid, "name": c.name, "origins": [], "meta": null},
        "delegates": ["/ip4/127.0.0.1/tcp/6744/p2p/12D3KooWEmulator"],
        "info": null,
    })
}

#[derive(Deserialize)]
struct PinsQuery {
    name: Option<String>,
    cid: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn pinning_pins(state: web::Data<State>, req: HttpRequest, q: web::Query<PinsQuery>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    if let Err(r) = check_auth(&state, &req) {
        return r.response();
    }
    let limit = q.limit.unwrap_or(10);
    if limit == 0 || limit > 1000 {
        return estuary_error(
            400,
            "ERR_INVALID_QUERY_PARAM_VALUE",
            "limit must be between 1 and 1000",
        );
    }
    let cids: Option<Vec<String>> = q
        .cid
        .as_ref()
        .map(|c| c.split(',').filter_map(canonical).collect());
    let statuses: Option<Vec<&str>> = q.status.as_deref().map(|s| s.split(',').collect());
    let contents = state.contents.lock().unwrap();
    let matching: Vec<&Content> = contents
        .values()
        .filter(|c| q.name.as_ref().is_none_or(|n| &c.name == n))
        .filter(|c| cids.as_ref().is_none_or(|l| l.contains(&c.cid)))
        .filter(|_| statuses.as_ref().is_none_or(|s| s.contains(&"pinned")))
        .collect();
    let results: Vec<_> = matching.iter().take(limit).map(|c| pin_status(c)).collect();
    HttpResponse::Ok().json(json!({"count": matching.len(), "results": results}))
}

/// `DELETE /pinning/pins/<requestid>`: drop one pin (the bytes go with the last pin of them).
async fn pinning_delete(state: web::Data<State>, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    if let Err(r) = check_auth(&state, &req) {
        return r.response();
    }
    let Ok(id) = id.parse::<u64>() else {
        return estuary_error(400, "ERR_INVALID_INPUT", "invalid request id");
    };
    let removed = state.contents.lock().unwrap().remove(&id);
    let Some(content) = removed else {
        return estuary_error(404, "ERR_RECORD_NOT_FOUND", "no pin with that request id");
    };
    let _ = std::fs::remove_file(state.dir.join("meta").join(id.to_string()));
    if state.size_of(&content.cid).is_none() {
        let _ = std::fs::remove_file(state.bytes_path(&content.cid));
    }
    HttpResponse::Accepted().finish()
}

async fn content_by_cid(state: web::Data<State>, req: HttpRequest, cid: web::Path<String>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    if let Err(r) = check_auth(&state, &req) {
        return r.response();
    }
    let Some(cid) = canonical(&cid) else {
        return estuary_error(400, "ERR_INVALID_INPUT", "invalid cid");
    };
    let contents = state.contents.lock().unwrap();
    let found: Vec<_> = contents
        .values()
        .filter(|c| c.cid == cid)
        .map(|c| {
            json!({
                "content": {"id": c.id, "cid": c.cid, "name": c.name, "size": c.size,
                            "active": true, "pinning": false, "failed": false,
                            "createdAt": c.created, "location": "local"},
                "deals": [],
            })
        })
        .collect();
    HttpResponse::Ok().json(found)
}

async fn viewer(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    if let Err(r) = check_auth(&state, &req) {
        return r.response();
    }
    HttpResponse::Ok().json(json!({"username": "ipcr", "perms": 2, "id": 1, "settings": {}}))
}

/// `[start, end)` of a file of `size` bytes per the request's `Range` (one range only).
fn range_of(req: &HttpRequest, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(r) = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let spec = r.strip_prefix("bytes=").ok_or(())?;
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        (size.saturating_sub(n), size)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e = if b.is_empty() {
            size
        } else {
            b.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(size)
        };
        (s, e)
    };
    if start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Stream `[start, end)` of the content, flipping one byte (the middle one of the content) in
/// the `corrupt` mode.
fn read_part(state: &State, cid: &str, start: u64, end: u64, size: u64) -> std::io::Result<HttpResponseBody> {
    let mut f = std::fs::File::open(state.bytes_path(cid))?;
    f.seek(SeekFrom::Start(start))?;
    let flip = (state.mode() == Mode::Corrupt).then_some(size / 2);
    state.reads.fetch_add(1, Ordering::SeqCst);
    let stream = futures::stream::unfold((f, start), move |(mut f, at)| async move {
        if at >= end {
            return None;
        }
        let mut buf = vec![0u8; ((end - at) as usize).min(1 << 20)];
        if let Err(e) = f.read_exact(&mut buf) {
            return Some((Err(e), (f, end)));
        }
        if let Some(x) = flip.filter(|x| (at..at + buf.len() as u64).contains(x)) {
            buf[(x - at) as usize] ^= 0x01;
        }
        let next = at + buf.len() as u64;
        Some((Ok(bytes::Bytes::from(buf)), (f, next)))
    });
    Ok(Box::pin(stream))
}

type HttpResponseBody = std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<bytes::Bytes>>>>;

async fn gateway(state: web::Data<State>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    let cid = path.split('/').next().unwrap_or("");
    let Some(cid) = canonical(cid) else {
        return HttpResponse::BadRequest().body("invalid cid");
    };
    let Some(size) = state.size_of(&cid) else {
        return HttpResponse::NotFound().body("not found");
    };
    match range_of(&req, size) {
        Err(()) => HttpResponse::RangeNotSatisfiable()
            .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
            .finish(),
        Ok(None) => match read_part(&state, &cid, 0, size, size) {
            Ok(b) => HttpResponse::Ok()
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .insert_header(("X-Ipfs-Path", format!("/ipfs/{cid}")))
                .no_chunking(size)
                .streaming(b),
            Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
        },
        Ok(Some((start, end))) => match read_part(&state, &cid, start, end, size) {
            Ok(b) => HttpResponse::PartialContent()
                .insert_header((header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1)))
                .no_chunking(end - start)
                .streaming(b),
            Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
        },
    }
}

#[derive(Deserialize)]
struct AddQuery {
    #[serde(rename = "cid-version")]
    cid_version: Option<u32>,
    #[serde(rename = "raw-leaves")]
    raw_leaves: Option<bool>,
    chunker: Option<String>,
    #[serde(rename = "max-file-links")]
    max_file_links: Option<u32>,
}

async fn kubo_add(state: web::Data<State>, q: web::Query<AddQuery>, payload: Multipart) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    if q.cid_version != Some(1) || q.raw_leaves != Some(true) || q.chunker.as_deref() != Some("size-1048576")
    {
        return kubo_error(
            "the emulator imports only with cid-version=1, raw-leaves=true, chunker=size-1048576",
        );
    }
    let links = q.max_file_links.unwrap_or(KUBO_LINKS);
    let content = match receive(&state, payload, "file", links).await {
        Ok(c) => c,
        Err(_) => return kubo_error("no file in the request"),
    };
    let cid = if state.mode() == Mode::WrongCid {
        other_cid(&content.cid)
    } else {
        content.cid.clone()
    };
    HttpResponse::Ok().content_type("application/json").body(format!(
        "{}\n",
        json!({"Name": content.name, "Hash": cid, "Size": content.size.to_string()})
    ))
}

#[derive(Deserialize)]
struct ArgQuery {
    arg: String,
    offset: Option<u64>,
    length: Option<u64>,
}

async fn kubo_cat(state: web::Data<State>, q: web::Query<ArgQuery>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    let Some(cid) = canonical(&q.arg) else {
        return kubo_error("invalid path");
    };
    let Some(size) = state.size_of(&cid) else {
        return kubo_error("block was not found locally (offline)");
    };
    let start = q.offset.unwrap_or(0).min(size);
    let end = q.length.map_or(size, |l| start.saturating_add(l).min(size));
    match read_part(&state, &cid, start, end, size) {
        Ok(b) => HttpResponse::Ok().content_type("text/plain").streaming(b),
        Err(e) => kubo_error(&e.to_string()),
    }
}

async fn kubo_pin_ls(state: web::Data<State>, q: web::Query<ArgQuery>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    match canonical(&q.arg).filter(|c| state.size_of(c).is_some()) {
        Some(cid) => HttpResponse::Ok().json(json!({"Keys": {cid: {"Type": "recursive"}}})),
        None => kubo_error(&format!("path '{}' is not pinned", q.arg)),
    }
}

async fn kubo_pin_rm(state: web::Data<State>, q: web::Query<ArgQuery>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    let Some(cid) = canonical(&q.arg) else {
        return kubo_error("invalid path");
    };
    let removed: Vec<u64> = {
        let mut contents = state.contents.lock().unwrap();
        let ids: Vec<u64> = contents.values().filter(|c| c.cid == cid).map(|c| c.id).collect();
        for id in &ids {
            contents.remove(id);
        }
        ids
    };
    if removed.is_empty() {
        return kubo_error("not pinned or pinned indirectly");
    }
    let _ = std::fs::remove_file(state.bytes_path(&cid));
    for id in removed {
        let _ = std::fs::remove_file(state.dir.join("meta").join(id.to_string()));
    }
    HttpResponse::Ok().json(json!({"Pins": [cid]}))
}

async fn kubo_version(state: web::Data<State>) -> HttpResponse {
    if let Some(r) = fault(&state).await {
        return r;
    }
    HttpResponse::Ok().json(json!({"Version": "0.32.1", "Commit": "emulator", "System": "amd64/linux"}))
}

#[derive(Deserialize)]
struct ModeQuery {
    set: String,
}

async fn set_mode(state: web::Data<State>, q: web::Query<ModeQuery>) -> HttpResponse {
    match Mode::parse(&q.set) {
        Some(m) => {
            *state.mode.lock().unwrap() = m;
            HttpResponse::NoContent().finish()
        }
        None => HttpResponse::BadRequest().body("mode: ok, refuse, hang, wrong-cid, corrupt"),
    }
}

async fn stats(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "adds": state.adds.load(Ordering::SeqCst),
        "reads": state.reads.load(Ordering::SeqCst),
        "contents": state.contents.lock().unwrap().len(),
    }))
}

fn load(dir: &Path) -> std::io::Result<(BTreeMap<u64, Content>, u64)> {
    std::fs::create_dir_all(dir.join("content"))?;
    std::fs::create_dir_all(dir.join("meta"))?;
    let mut contents = BTreeMap::new();
    let mut next = 1;
    for entry in std::fs::read_dir(dir.join("meta"))? {
        let entry = entry?;
        if let Ok(c) = serde_json::from_slice::<Content>(&std::fs::read(entry.path())?) {
            next = next.max(c.id + 1);
            contents.insert(c.id, c);
        }
    }
    Ok((contents, next))
}

fn usage() -> ! {
    eprintln!("usage: estuary-emulator --dir DIR [--addr 127.0.0.1:0] [--token TOKEN]...");
    std::process::exit(2)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut addr, mut tokens) = (None, "127.0.0.1:0".to_string(), Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--addr" => addr = args.next().unwrap_or_else(|| usage()),
            "--token" => tokens.push(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let dir = dir.unwrap_or_else(|| usage());
    let (contents, next) = load(&dir)?;
    let state = web::Data::new(State {
        dir,
        tokens,
        mode: Mutex::new(Mode::Ok),
        next_id: AtomicU64::new(next),
        contents: Mutex::new(contents),
        adds: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    });
    let listener = std::net::TcpListener::bind(&addr)?;
    let bound = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/content/add", web::post().to(content_add))
            .route("/pinning/pins", web::get().to(pinning_pins))
            .route("/pinning/pins/{id}", web::delete().to(pinning_delete))
            .route("/content/by-cid/{cid}", web::get().to(content_by_cid))
            .route("/viewer", web::get().to(viewer))
            .route("/gw/ipfs/{path:.*}", web::get().to(gateway))
            .route("/ipfs/{path:.*}", web::get().to(gateway))
            .route("/api/v0/add", web::post().to(kubo_add))
            .route("/api/v0/cat", web::post().to(kubo_cat))
            .route("/api/v0/pin/ls", web::post().to(kubo_pin_ls))
            .route("/api/v0/pin/rm", web::post().to(kubo_pin_rm))
            .route("/api/v0/version", web::post().to(kubo_version))
            .route("/_emulator/mode", web::post().to(set_mode))
            .route("/_emulator/stats", web::get().to(stats))
    })
    .workers(2)
    .listen(listener)?
    .run();
    println!("listening on http://{bound}");
    std::io::stdout().flush()?;
    server.await
}
