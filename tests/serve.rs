//! `stargan serve` from the outside: a server process on 127.0.0.1 with an ephemeral port, spoken
//! to over raw TCP (so malformed requests can be sent as they are): every route, every error code,
//! access control, backpressure, malformed traffic, graceful shutdown, and the page in a real
//! browser (Debian's chromium driven by playwright-core; scripts/setup.sh installs both).

mod common;

use common::photo_path;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    client: Client,
}

/// Requests to a server's address.
#[derive(Clone)]
struct Client {
    addr: String,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let ckpt = common::parity_root().join("celeba/0-G.ckpt");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stargan"))
            .args([
                "serve",
                "--checkpoint",
                ckpt.to_str().unwrap(),
                "--addr",
                "127.0.0.1:0",
                "--device",
                "cpu",
            ])
            .args(extra)
            .env("STARGAN_LOG", "warn")
            .env_remove("STARGAN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start stargan serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, client: Client { addr } }
    }

    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Client {
    /// Send `request` bytes as they are; the status, headers and body of the answer.
    fn raw(&self, request: &[u8]) -> Reply {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Reply::parse(&out)
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut r = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            r += &format!("{k}: {v}\r\n");
        }
        r += "\r\n";
        let mut bytes = r.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    /// A multipart POST: the image as field `image`, then the text fields.
    fn form(&self, path: &str, image: &[u8], fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
        let (body, ctype) = multipart(image, fields);
        let mut h = vec![("Content-Type", ctype.as_str())];
        h.extend_from_slice(headers);
        self.request("POST", path, &h, &body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn multipart(image: &[u8], fields: &[(&str, &str)]) -> (Vec<u8>, String) {
    let b = "stargan-test-boundary";
    let mut body = format!("--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n").into_bytes();
    body.extend_from_slice(image);
    for (k, v) in fields {
        body.extend_from_slice(
            format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}").as_bytes(),
        );
    }
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (body, format!("multipart/form-data; boundary={b}"))
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |p| p + 4);
        let head = String::from_utf8_lossy(&raw[..end]);
        let mut lines = head.lines();
        let status =
            lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[end..].to_vec();
        if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
            body = dechunk(&body);
        }
        Reply { status, headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error `code` of a JSON error answer.
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..p]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[p + 2..(p + 2 + n).min(b.len())]);
        b = &b[(p + 4 + n).min(b.len())..];
    }
    out
}

fn png(img: &image::RgbImage) -> Vec<u8> {
    stargan::image_io::encode_rgb8(
        img.as_raw(),
        img.width(),
        img.height(),
        stargan::image_io::ImageFormat::Png,
    )
    .unwrap()
}

fn decode(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).expect("an image").to_rgb8()
}

#[test]
fn every_route_and_every_error_code() {
    let s = Server::start(&["--max-megapixels", "0.5", "--max-upload-mb", "1", "--rate", "0"]);
    let astronaut = std::fs::read(photo_path("astronaut.png")).unwrap();

    assert_eq!(s.get("/healthz").status, 200);
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("/v1/translate"));
    let m = s.get("/v1/model").json();
    assert_eq!(m["image_size"], 32);
    assert_eq!(m["labels"].as_array().unwrap().len(), 5);
    assert!(m["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "hair colour" && g["exclusive"] == true));

    // Detect: raw body; one face with landmarks and D's reading of its labels.
    let d = s.request("POST", "/v1/detect", &[("Content-Type", "image/png")], &astronaut);
    assert_eq!(d.status, 200, "{}", String::from_utf8_lossy(&d.body));
    let faces = d.json()["faces"].as_array().unwrap().clone();
    assert_eq!(faces.len(), 1);
    assert_eq!(faces[0]["landmarks"].as_array().unwrap().len(), 5);
    assert_eq!(faces[0]["labels"].as_object().unwrap().len(), 5);

    // Translate: multipart with edits; the composite has the photo's size and one face.
    let t = s.form("/v1/translate", &astronaut, &[("set", "Blond_Hair=1"), ("set", "Young=0.5")], &[]);
    assert_eq!(t.status, 200, "{}", String::from_utf8_lossy(&t.body));
    assert_eq!(t.header("content-type"), Some("image/png"));
    assert_eq!(t.header("x-faces"), Some("1"));
    assert_eq!(decode(&t.body).dimensions(), (512, 512));
    // Raw body with the parameters in the query; a label vector; JPEG; the whole image.
    let t = s.request(
        "POST",
        "/v1/translate?target=0,1,0,1,0&format=jpeg&align=off",
        &[("Content-Type", "image/png")],
        &astronaut,
    );
    assert_eq!(t.status, 200);
    assert_eq!(t.header("content-type"), Some("image/jpeg"));
    assert_eq!(decode(&t.body).dimensions(), (32, 32));

    let cases: Vec<(Reply, u16, &str)> = vec![
        (s.get("/nowhere"), 404, "not_found"),
        (s.get("/v1/translate"), 405, "method_not_allowed"),
        (
            s.request(
                "POST",
                "/v1/translate?set=Blond_Hair=1",
                &[("Content-Type", "application/json")],
                b"{}",
            ),
            415,
            "unsupported_media_type",
        ),
        (
            s.request(
                "POST",
                "/v1/translate?set=Blond_Hair=1",
                &[("Content-Type", "image/png")],
                b"not an image",
            ),
            400,
            "bad_image",
        ),
        (s.form("/v1/translate", &astronaut, &[("set", "Blond_Hair=NaN")], &[]), 400, "bad_target"),
        (s.form("/v1/translate", &astronaut, &[("set", "Bald=1")], &[]), 400, "bad_target"),
        (s.form("/v1/translate", &astronaut, &[("target", "1,0")], &[]), 400, "bad_target"),
        (s.form("/v1/translate", &astronaut, &[], &[]), 400, "bad_target"),
        (s.form("/v1/translate", &astronaut, &[("set", "Male=1"), ("face", "2")], &[]), 422, "no_face"),
        (
            s.form("/v1/translate", &astronaut, &[("set", "Male=1"), ("align", "sideways")], &[]),
            400,
            "bad_request",
        ),
        (s.form("/v1/translate", &astronaut, &[("set", "Male=1"), ("colour", "1")], &[]), 400, "bad_request"),
        (
            s.request(
                "POST",
                "/v1/translate?set=Male=1",
                &[("Content-Type", "multipart/form-data; boundary=x")],
                b"--x\r\ngarbage",
            ),
            400,
            "bad_request",
        ),
    ];
    for (r, status, code) in cases {
        assert_eq!((r.status, r.code().as_str()), (status, code), "{}", String::from_utf8_lossy(&r.body));
    }
    // No face with align=on.
    let blank = png(&image::RgbImage::from_pixel(200, 150, image::Rgb([90, 90, 90])));
    let r = s.form("/v1/translate", &blank, &[("set", "Male=1"), ("align", "on")], &[]);
    assert_eq!((r.status, r.code().as_str()), (422, "no_face"));
    // Too many pixels, refused from the header (0.5 MP allowed), and too many bytes (1 MiB).
    let big = png(&image::RgbImage::new(1000, 1000));
    let r = s.request("POST", "/v1/detect", &[("Content-Type", "image/png")], &big);
    assert_eq!((r.status, r.code().as_str()), (413, "too_many_pixels"));
    // A body declared larger than the limit is refused from its Content-Length, before any is sent.
    let r = s.raw(b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nConnection: close\r\nContent-Length: 3000000\r\n\r\n");
    assert_eq!((r.status, r.code().as_str()), (413, "too_large"));
    // Another site's page, or a rebound host name, may not use the API.
    let r = s.request("GET", "/v1/model", &[("Origin", "http://evil.example")], b"");
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden_origin"));
    let own = format!("http://{}", s.addr);
    assert_eq!(s.request("GET", "/v1/model", &[("Origin", &own)], b"").status, 200);
    let r = s.raw(b"GET /v1/model HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden_host"));

    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    for series in [
        "stargan_http_requests_total{route=\"/v1/translate\",status=\"200\"} 2",
        "stargan_http_request_seconds_bucket",
        "stargan_batch_size_count",
        "stargan_queue_depth 0",
        "stargan_rejected_total 0",
    ] {
        assert!(metrics.contains(series), "no `{series}` in\n{metrics}");
    }
}

#[test]
fn access_tokens_and_rate_limits() {
    // Off loopback without a token: refused at start.
    let ckpt = common::parity_root().join("celeba/0-G.ckpt");
    let out = Command::new(env!("CARGO_BIN_EXE_stargan"))
        .args(["serve", "--checkpoint", ckpt.to_str().unwrap(), "--addr", "0.0.0.0:0"])
        .env_remove("STARGAN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let s = Server::start(&["--token", "s3cret-token", "--rate", "0"]);
    assert_eq!(s.get("/healthz").status, 200);
    let r = s.get("/v1/model");
    assert_eq!((r.status, r.code().as_str()), (401, "unauthorized"));
    let r = s.request("GET", "/v1/model", &[("Authorization", "Bearer s3cret-tokem")], b"");
    assert_eq!(r.status, 401);
    assert_eq!(s.request("GET", "/v1/model", &[("Authorization", "Bearer s3cret-token")], b"").status, 200);
    drop(s);

    // One request per second per client, bursts of two: the third at once is 429 with Retry-After.
    let s = Server::start(&["--rate", "1"]);
    let codes: Vec<u16> = (0..3).map(|_| s.get("/v1/model").status).collect();
    assert_eq!(codes, [200, 200, 429]);
    let r = s.get("/v1/model");
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
}

/// A queue of one behind a worker busy with a batch of one: concurrent requests beyond it are
/// refused with 503 and Retry-After, the rest answered; none fails otherwise.
#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = Server::start(&["--queue", "1", "--max-batch", "1", "--rate", "0"]);
    let astronaut = std::fs::read(photo_path("astronaut.png")).unwrap();
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let (s, img) = (s.client.clone(), astronaut.clone());
            std::thread::spawn(move || s.form("/v1/translate", &img, &[("set", "Male=1")], &[]))
        })
        .collect();
    let replies: Vec<Reply> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + busy.len(), 12, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(ok >= 1 && !busy.is_empty(), "{ok} answered, {} refused", busy.len());
    assert!(busy.iter().all(|r| r.code() == "busy" && r.header("retry-after") == Some("1")));
}

/// Seeded, bounded malformed traffic: truncated and oversized multipart bodies, lying lengths,
/// wrong content types, huge headers, random bytes, image bombs, NaN targets. Each gets a 4xx or a
/// closed connection; the server stays up and its memory stays under 1.5 GB.
#[test]
fn malformed_traffic_gets_4xx_and_the_server_stays_up() {
    let s =
        Server::start(&["--max-upload-mb", "2", "--max-megapixels", "4", "--rate", "0", "--timeout", "5"]);
    let astronaut = std::fs::read(photo_path("astronaut.png")).unwrap();
    let (good, ctype) = multipart(&astronaut, &[("set", "Male=1")]);
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // An image bomb: a PNG header claiming 30000×30000 in a few hundred bytes.
    let bomb = {
        let mut p = png(&image::RgbImage::new(8, 8));
        p[16..20].copy_from_slice(&30000u32.to_be_bytes());
        p[20..24].copy_from_slice(&30000u32.to_be_bytes());
        p
    };
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..60 {
        let r = match i % 10 {
            0 => {
                let cut = (next() as usize) % good.len();
                s.request("POST", "/v1/translate", &[("Content-Type", &ctype)], &good[..cut])
            }
            1 => {
                // A body shorter than its Content-Length: the server waits, then gives up.
                let mut req = format!("POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n", astronaut.len()).into_bytes();
                req.extend_from_slice(&astronaut[..1000]);
                let mut st = TcpStream::connect(&s.addr).unwrap();
                st.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                st.write_all(&req).unwrap();
                st.shutdown(std::net::Shutdown::Write).unwrap();
                let mut out = Vec::new();
                let _ = st.read_to_end(&mut out);
                Reply::parse(&out)
            }
            2 => s.request("POST", "/v1/detect", &[("Content-Type", "image/png")], &vec![7u8; 3 << 20]),
            3 => s.request("POST", "/v1/translate?set=Male=1", &[("Content-Type", "text/plain")], b"hello"),
            4 => {
                let huge = "a".repeat(200_000);
                s.request("GET", "/v1/model", &[("X-Huge", &huge)], b"")
            }
            5 => {
                let junk: Vec<u8> = (0..2000).map(|_| next() as u8).collect();
                s.raw(&junk)
            }
            6 => s.request("POST", "/v1/detect", &[("Content-Type", "image/png")], &bomb),
            7 => s.form("/v1/translate", &astronaut, &[("set", "Male=nan"), ("set", "Young=inf")], &[]),
            8 => {
                let mut flipped = astronaut.clone();
                for _ in 0..20 {
                    let k = (next() as usize) % flipped.len();
                    flipped[k] ^= 0xff;
                }
                s.request("POST", "/v1/translate?set=Male=1", &[("Content-Type", "image/png")], &flipped)
            }
            _ => {
                s.request("POST", "/v1/translate?target=[1,2]", &[("Content-Type", "image/png")], &astronaut)
            }
        };
        // 200 only for a flipped-bytes PNG that still decodes; 0 is a dropped connection.
        assert!(
            r.status == 0 || (400..500).contains(&r.status) || (i % 10 == 8 && r.status == 200),
            "case {i}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        *statuses.entry(r.status).or_insert(0) += 1;
        assert_eq!(s.get("/healthz").status, 200, "down after case {i}");
    }
    let rss = s.rss_mb();
    println!("malformed traffic: statuses {statuses:?}, server RSS {rss:.0} MB");
    assert!(rss < 1500.0, "the server holds {rss:.0} MB");
    assert_eq!(s.form("/v1/translate", &astronaut, &[("set", "Male=1")], &[]).status, 200);
}

/// A client that never finishes its headers (slowloris) is dropped after `--header-timeout`,
/// and the server goes on answering others meanwhile.
#[test]
fn a_client_that_never_finishes_its_headers_is_dropped() {
    let s = Server::start(&["--header-timeout", "1", "--rate", "0"]);
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    slow.write_all(b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
    assert_eq!(s.get("/healthz").status, 200);
    let mut out = Vec::new();
    // Read until the server closes: an EOF (perhaps after a 408), not our 20 s read timeout.
    let closed = slow.read_to_end(&mut out);
    assert!(closed.is_ok(), "the server kept the half-sent request open: {closed:?}");
    let status = Reply::parse(&out).status;
    assert!(status == 0 || status == 408, "{status}");
}

/// SIGTERM while a request is in flight: it is answered, then the server exits cleanly.
#[test]
fn sigterm_finishes_what_is_in_flight() {
    let mut s = Server::start(&["--batch-wait-ms", "1500", "--rate", "0"]);
    let astronaut = std::fs::read(photo_path("astronaut.png")).unwrap();
    let client = s.client.clone();
    let inflight =
        std::thread::spawn(move || client.form("/v1/translate", &astronaut, &[("set", "Male=1")], &[]));
    // The job now waits in the worker for company (1.5 s); SIGTERM arrives meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let status = s.terminate();
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

/// 100 concurrent clients uploading a real photo at once, each answered (bounded: one request
/// each, loopback only). Throughput and latency are measured by `stargan bench --what serve`.
#[test]
fn a_hundred_concurrent_clients_are_all_answered() {
    let s = Server::start(&["--rate", "0", "--queue", "128", "--timeout", "120"]);
    let crop = std::fs::read(photo_path("astronaut.png")).unwrap();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let (s, img) = (s.client.clone(), crop.clone());
            std::thread::spawn(move || {
                let align = if i % 2 == 0 { "off" } else { "auto" };
                s.form("/v1/translate", &img, &[("set", "Male=1"), ("align", align)], &[]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    let batches = metrics.lines().find(|l| l.starts_with("stargan_batch_size_count")).unwrap().to_string();
    println!("100 clients: all answered; {batches}");
}

/// The page in a real browser: upload a photo, change an attribute, wait for the result; the result
/// differs from the photo inside the face and equals it far from it; a screenshot is saved.
#[test]
fn the_page_translates_a_photo_in_a_real_browser() {
    let s = Server::start(&["--rate", "0"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/page.mjs");
    let shot = std::env::temp_dir().join(format!("stargan-page-{}.png", std::process::id()));
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{}/", s.addr))
        .arg(photo_path("astronaut.png"))
        .arg(&shot)
        .output()
        .expect("node (scripts/setup.sh installs playwright-core and chromium)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(said.lines().last().unwrap_or("")).unwrap();
    println!("browser: {v}");
    assert_eq!(v["faces"], 1);
    assert!(v["results"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["inside_changed"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["outside_changed"], 0, "{v}");
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false));
}
