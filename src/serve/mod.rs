//! `stargan serve`: a page and an HTTP API for translating photos, on axum/tokio/tower-http.
//!
//! The HTTP side decodes and checks uploads (body size, decoded pixels before decoding, targets)
//! and encodes results; the [`engine`] worker owns the model and runs G in dynamic batches. Nothing
//! is written to disk; uploads and results stay in memory.

pub mod engine;
pub mod metrics;

use crate::error::{Error, ErrorKind};
use crate::face::{Align, Detector, Which};
use crate::image_io::ImageFormat;
use crate::inference::{Edit, Model, Target};
use crate::labels::{LabelKind, HAIR_COLOURS};
use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Multipart, RawQuery, Request, State,
};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Done, Engine, EngineConfig, Work};
use metrics::Metrics;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything `serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// Required of every API request when set (`Authorization: Bearer …`).
    pub token: Option<String>,
    /// Bind a non-loopback address without a token.
    pub public: bool,
    /// Origins besides the page's own that may call the API from a browser.
    pub allow_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// Decoded pixels (width × height) an upload may have, checked from its header.
    pub max_pixels: u64,
    /// Time a request may take in all.
    pub request_timeout: Duration,
    /// Time a client has to send a request's headers (slow clients are dropped).
    pub header_timeout: Duration,
    /// Requests per second per client address (bursts of twice that).
    pub rate_per_client: f64,
    pub engine: EngineConfig,
}

/// An API error: a status, a stable `code` and a message, sent as
/// `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }
    fn busy() -> Self {
        ApiError { retry_after: Some(1), ..Self::new(503, "busy", "the server is busy; retry in a moment") }
    }
    fn shutting_down() -> Self {
        Self::new(503, "shutting_down", "the server is shutting down")
    }
    fn deadline() -> Self {
        Self::new(504, "deadline", "the request waited past its deadline")
    }
    fn internal(m: &str) -> Self {
        Self::new(500, "internal", m)
    }
    /// A target the model cannot take (unknown label, wrong length, a value out of range).
    fn target(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Input => Self::new(400, "bad_target", e.to_string()),
            _ => e.into(),
        }
    }
    /// No face, or not the one asked for.
    fn faces(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Input => Self::new(422, "no_face", e.to_string()),
            _ => e.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Input | ErrorKind::Data => ApiError::new(400, "bad_image", e.to_string()),
            ErrorKind::Io | ErrorKind::Internal => ApiError::new(500, "internal", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut r = (status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

struct AppState {
    engine: Engine,
    metrics: Arc<Metrics>,
    model_info: serde_json::Value,
    cfg: ServeConfig,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// Uploads being decoded at once: each may take up to `max_pixels` × 11 bytes (16-bit RGBA and
    /// its RGB copy), so memory stays bounded however many requests arrive.
    decoding: tokio::sync::Semaphore,
}

type Shared = Arc<AppState>;

/// What `/v1/model` says: labels and their groups (how the page lays out its controls).
fn model_info(model: &Model, detector: bool, cfg: &ServeConfig) -> serde_json::Value {
    let mut groups = Vec::new();
    for d in &model.layout.domains {
        match d.kind {
            LabelKind::OneHot => groups.push(serde_json::json!({
                "name": d.name, "dataset": d.name, "exclusive": true, "labels": d.labels })),
            LabelKind::MultiLabel => {
                let hair: Vec<&String> =
                    d.labels.iter().filter(|l| HAIR_COLOURS.contains(&l.as_str())).collect();
                if !hair.is_empty() {
                    groups.push(serde_json::json!({
                        "name": "hair colour", "dataset": d.name, "exclusive": true, "labels": hair }));
                }
                for l in d.labels.iter().filter(|l| !HAIR_COLOURS.contains(&l.as_str())) {
                    groups.push(serde_json::json!({
                        "name": l, "dataset": d.name, "exclusive": false, "labels": [l] }));
                }
            }
        }
    }
    let g = &model.g.config;
    serde_json::json!({
        "labels": model.layout.domains.iter().flat_map(|d| d.labels.clone()).collect::<Vec<_>>(),
        "groups": groups,
        "labels_from_checkpoint": model.labels_known,
        "image_size": model.input_size(),
        "architecture": { "g_conv_dim": g.conv_dim, "c_dim": g.c_dim, "g_repeat_num": g.repeat_num,
                          "attention_mask": g.attention, "discriminator": model.d.is_some() },
        "precision": cfg.engine.precision.to_string(),
        "device": format!("{:?}", model.g.device()),
        "face_detector": detector,
        "max_batch": cfg.engine.max_batch,
        "max_body_bytes": cfg.max_body_bytes,
        "max_pixels": cfg.max_pixels,
    })
}

/// Serve until SIGTERM or Ctrl-C; `ready` gets the bound address once listening.
pub fn serve(
    cfg: ServeConfig,
    model: Model,
    detector: Option<Detector>,
    ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> crate::error::Result<()> {
    serve_until(cfg, model, detector, ready, shutdown_signal())
}

/// [`serve`] until `stop` completes (then in-flight requests are answered and the worker drains).
pub fn serve_until(
    cfg: ServeConfig,
    model: Model,
    detector: Option<Detector>,
    ready: impl FnOnce(SocketAddr) + Send + 'static,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> crate::error::Result<()> {
    if !cfg.addr.ip().is_loopback() && cfg.token.is_none() && !cfg.public {
        return Err(Error::Input(format!(
            "{} is reachable from other machines: give an access token (`token`, or STARGAN_TOKEN) or say `public`",
            cfg.addr
        )));
    }
    let metrics = Arc::new(Metrics::default());
    let info = model_info(&model, detector.is_some(), &cfg);
    let engine = Engine::start(model, detector, cfg.engine, metrics.clone());
    let state = Arc::new(AppState {
        engine,
        metrics,
        model_info: info,
        cfg: cfg.clone(),
        buckets: Mutex::new(HashMap::new()),
        decoding: tokio::sync::Semaphore::new(2),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the server runtime: {e}")))?;
    let serving = state.clone();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.addr)
            .await
            .map_err(|e| Error::Input(format!("cannot listen on {}: {e}", cfg.addr)))?;
        let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        ready(addr);
        let app = router(serving);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors, say: wait rather than spin.
                            tracing::warn!("cannot accept a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // The client's address, for the rate limit (what axum's connect-info service does).
                    let svc = hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                        app.clone(),
                        move |mut r: axum::http::Request<hyper::body::Incoming>| {
                            r.extensions_mut().insert(ConnectInfo(peer));
                            r
                        },
                    ));
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(cfg.header_timeout);
                    let conn = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc));
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = &mut stop => break,
            }
        }
        drop(listener);
        // Requests in flight are answered (each within its own timeout), then we stop.
        let _ = tokio::time::timeout(cfg.request_timeout + Duration::from_secs(5), graceful.shutdown()).await;
        Ok::<(), Error>(())
    })?;
    // In-flight requests are answered; now let the worker finish and stop.
    if let Ok(mut s) = Arc::try_unwrap(state).map_err(|_| ()) {
        s.engine.shutdown();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn router(state: Shared) -> Router {
    let cfg = &state.cfg;
    let api = Router::new()
        .route("/v1/model", get(get_model))
        .route("/v1/detect", post(detect))
        .route("/v1/translate", post(translate))
        .route("/metrics", get(get_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let mut app = Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api)
        .fallback(|| async { ApiError::new(404, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(405, "method_not_allowed", "wrong method for this route")
        })
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(middleware::from_fn(header_limit))
        .layer(middleware::from_fn_with_state(state.clone(), same_origin))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(cfg.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            cfg.request_timeout,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    if !cfg.allow_origins.is_empty() {
        let origins: Vec<HeaderValue> = cfg.allow_origins.iter().filter_map(|o| o.parse().ok()).collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    app.with_state(state)
}

/// The most header bytes a request may send (hyper itself stops reading at about 400 KB).
const MAX_HEADER_BYTES: usize = 16 << 10;

async fn header_limit(req: Request, next: Next) -> Response {
    let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > MAX_HEADER_BYTES {
        return ApiError::new(
            431,
            "headers_too_large",
            format!("the request's headers exceed {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Answers made by layers below us (tower-http's 408 and 413) as our JSON errors.
async fn json_errors(req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    let json =
        r.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = r.status().as_u16();
    if status < 400 || json {
        return r;
    }
    let (code, message) = match status {
        408 => ("timeout", "the request took longer than the server allows"),
        413 => ("too_large", "the upload is larger than the server allows"),
        431 => ("headers_too_large", "the request's headers are too large"),
        _ => ("error", "the request failed"),
    };
    ApiError::new(status, code, message).into_response()
}

/// Browsers send `Origin` on cross-site requests: only the page's own origin (or one allowed)
/// may use the API, so another site cannot make a visitor's browser spend this server. A loopback
/// server also insists on a loopback `Host` (DNS rebinding).
async fn same_origin(State(s): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if s.cfg.addr.ip().is_loopback() {
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if !matches!(name, "localhost" | "127.0.0.1" | "[::1]") && !host.is_empty() {
            return ApiError::new(403, "forbidden_host", format!("`{host}` is not this loopback server"))
                .into_response();
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let own = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
        if !own && !s.cfg.allow_origins.iter().any(|o| o == origin) {
            return ApiError::new(
                403,
                "forbidden_origin",
                format!("requests from `{origin}` are not allowed (--allow-origin)"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Requests and latency by route and status.
async fn observe(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("other".to_string(), |p| p.as_str().to_string());
    let t = Instant::now();
    let r = next.run(req).await;
    s.metrics.observe(&route, r.status().as_u16(), t.elapsed().as_secs_f64());
    r
}

/// `Authorization: Bearer <token>` when the server has a token, compared in constant time.
async fn authorize(State(s): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &s.cfg.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !tokens_equal(given.as_bytes(), token.as_bytes()) {
            return ApiError::new(
                401,
                "unauthorized",
                "a valid access token is required (Authorization: Bearer …)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Equal-time comparison: as long for a wrong token as for a right one of the same length (the
/// length itself is not secret enough to hide).
fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A token bucket per client address: `rate` per second, bursts of twice that.
async fn rate_limit(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let rate = s.cfg.rate_per_client;
    if rate > 0.0 && req.uri().path() != "/healthz" {
        let burst = (2.0 * rate).max(1.0);
        let now = Instant::now();
        let wait = {
            let mut b = s.buckets.lock().unwrap_or_else(|e| e.into_inner());
            if b.len() > 10_000 {
                // Forget clients idle long enough to have refilled.
                b.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() * rate < burst);
            }
            let (tokens, last) = b.entry(client_key(peer.ip())).or_insert((burst, now));
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
            *last = now;
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                None
            } else {
                Some(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
            }
        };
        if let Some(secs) = wait {
            s.metrics.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut e = ApiError::new(
                429,
                "rate_limited",
                format!("more than {rate} requests per second from {}", peer.ip()),
            );
            e.retry_after = Some(secs);
            return e.into_response();
        }
    }
    next.run(req).await
}

/// The rate limit's client: an IPv4 address, or an IPv6 /64 (one host's usual allocation, which it
/// could otherwise rotate through).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].iter_mut().for_each(|s| *s = 0);
                IpAddr::V6(std::net::Ipv6Addr::from(seg))
            }
        },
        v4 => v4,
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn get_model(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(s.model_info.clone())
}

async fn get_metrics(State(s): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

/// An upload: the image bytes and the parameters (query string, then multipart fields).
struct Upload {
    image: Bytes,
    params: Vec<(String, String)>,
}

async fn upload(query: Option<String>, req: Request, state: &Shared) -> Result<Upload, ApiError> {
    let mut params: Vec<(String, String)> = match query {
        Some(q) => {
            serde_urlencoded::from_str(&q).map_err(|e| ApiError::bad_request(format!("query: {e}")))?
        }
        None => Vec::new(),
    };
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let over =
        || ApiError::new(413, "too_large", format!("the upload exceeds {} bytes", state.cfg.max_body_bytes));
    let read_error = |e: &axum::extract::multipart::MultipartError| {
        let m = e.body_text();
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            over()
        } else {
            ApiError::bad_request(format!("cannot read the body: {m}"))
        }
    };
    let image = if ctype.starts_with("multipart/form-data") {
        let mut mp =
            Multipart::from_request(req, state).await.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let mut image = None;
        while let Some(field) = mp.next_field().await.map_err(|e| read_error(&e))? {
            let name = field.name().unwrap_or("").to_string();
            let data = field.bytes().await.map_err(|e| read_error(&e))?;
            if name == "image" {
                image = Some(data);
            } else {
                let v = String::from_utf8(data.to_vec())
                    .map_err(|_| ApiError::bad_request(format!("field `{name}` is not text")))?;
                params.push((name, v));
            }
        }
        image.ok_or_else(|| ApiError::bad_request("no `image` field in the form"))?
    } else if ctype.starts_with("image/") || ctype == "application/octet-stream" {
        axum::body::to_bytes(req.into_body(), state.cfg.max_body_bytes).await.map_err(|_| over())?
    } else {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!(
                "send the image as multipart/form-data (field `image`) or a raw image/* body, not `{ctype}`"
            ),
        ));
    };
    if image.is_empty() {
        return Err(ApiError::new(400, "bad_image", "the image is empty"));
    }
    Ok(Upload { image, params })
}

/// Decode an upload, its size checked from the header first (a 100 000² PNG is a few KB).
async fn decode(s: &Shared, bytes: Bytes) -> Result<image::RgbImage, ApiError> {
    let max_pixels = s.cfg.max_pixels;
    let _permit = s.decoding.acquire().await.map_err(|_| ApiError::shutting_down())?;
    tokio::task::spawn_blocking(move || {
        let reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| ApiError::new(400, "bad_image", e.to_string()))?;
        if reader.format().is_none() {
            return Err(ApiError::new(400, "bad_image", "not a recognised image format (PNG and JPEG are)"));
        }
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| ApiError::new(400, "bad_image", format!("unreadable image header: {e}")))?;
        if u64::from(w) * u64::from(h) > max_pixels {
            return Err(ApiError::new(
                413,
                "too_many_pixels",
                format!("a {w}×{h} image exceeds the {max_pixels}-pixel limit"),
            ));
        }
        crate::face::decode_photo(&bytes, "the upload")
            .map_err(|e| ApiError::new(400, "bad_image", e.to_string()))
    })
    .await
    .map_err(|_| ApiError::internal("the decoder stopped"))?
}

async fn run(s: &Shared, work: Work) -> Result<Done, ApiError> {
    // Before the request timeout (408) fires, so a job stuck in the queue is answered 504.
    let deadline = Instant::now() + s.cfg.request_timeout.mul_f64(0.9);
    let rx = s.engine.submit(work, deadline)?;
    // Dropping `rx` (the client went away, the timeout fired) tells the worker to skip the job.
    rx.await.map_err(|_| ApiError::internal("the inference worker stopped"))?
}

async fn detect(State(s): State<Shared>, RawQuery(q): RawQuery, req: Request) -> Result<Response, ApiError> {
    let up = upload(q, req, &s).await?;
    let image = decode(&s, up.image).await?;
    let (w, h) = image.dimensions();
    match run(&s, Work::Detect { image }).await? {
        Done::Detected(faces) => {
            Ok(Json(serde_json::json!({ "width": w, "height": h, "faces": faces })).into_response())
        }
        Done::Translated { .. } => Err(ApiError::internal("detect answered with a translation")),
    }
}

/// `set=NAME=VALUE` (repeatable) or `target=0,1,…`, `face=N`, `align=auto|on|off`, `format=png|jpeg`.
fn translate_params(params: &[(String, String)]) -> Result<(Target, Which, Align, ImageFormat), ApiError> {
    let bad = |m: String| ApiError::new(400, "bad_target", m);
    let mut edits = Vec::new();
    let mut vector = None;
    let (mut which, mut align, mut format) = (Which::All, Align::Auto, ImageFormat::Png);
    for (k, v) in params {
        match k.as_str() {
            "set" => edits.push(v.parse::<Edit>().map_err(|e| bad(format!("set: {e}")))?),
            "target" => vector = Some(Target::parse_vector(v).map_err(|e| bad(format!("target: {e}")))?),
            "face" => {
                which = match v.parse::<usize>() {
                    Ok(n) if n >= 1 => Which::Nth(n),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "face: `{v}` is not a face number (from 1)"
                        )))
                    }
                }
            }
            "align" => {
                align = v.parse().map_err(|e| ApiError::bad_request(format!("align: {e}")))?;
            }
            "format" => {
                format = match v.as_str() {
                    "png" => ImageFormat::Png,
                    "jpeg" | "jpg" => ImageFormat::Jpeg,
                    _ => return Err(ApiError::bad_request(format!("format: `{v}` is not png or jpeg"))),
                }
            }
            other => return Err(ApiError::bad_request(format!("unknown parameter `{other}`"))),
        }
    }
    let target = match (vector, edits.is_empty()) {
        (Some(_), false) => return Err(bad("give `target` or `set`, not both".into())),
        (Some(t), true) => t,
        (None, false) => Target::Edits(edits),
        (None, true) => return Err(bad("no target: give `set=NAME=VALUE` or `target=0,1,…`".into())),
    };
    Ok((target, which, align, format))
}

async fn translate(
    State(s): State<Shared>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let up = upload(q, req, &s).await?;
    let (target, which, align, format) = translate_params(&up.params)?;
    let image = decode(&s, up.image).await?;
    let Done::Translated { image, faces } = run(&s, Work::Translate { image, target, which, align }).await?
    else {
        return Err(ApiError::internal("translate answered with a detection"));
    };
    let bytes = tokio::task::spawn_blocking(move || {
        crate::image_io::encode_rgb8(image.as_raw(), image.width(), image.height(), format)
    })
    .await
    .map_err(|_| ApiError::internal("the encoder stopped"))??;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(format.mime())),
            (header::HeaderName::from_static("x-faces"), HeaderValue::from(faces)),
        ],
        bytes,
    )
        .into_response())
}
