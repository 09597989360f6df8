//! `stargan bench --what serve`: the server under load on loopback. A server runs in this process
//! with the built-in model's architecture (`TrainConfig::synthetic_default`, freshly initialised:
//! speed does not depend on the weights); closed-loop clients on their own threads send real photos
//! over raw HTTP/1.1 and time each answer.

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::inference::Model;
use crate::labels::{celeba_domain, LabelLayout};
use crate::serve::engine::EngineConfig;
use crate::serve::ServeConfig;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One load run's figures.
pub struct Load {
    pub clients: usize,
    pub requests: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_second: f64,
    pub mean_batch: f64,
}

fn built_in_model() -> Model {
    let cfg = TrainConfig::synthetic_default();
    let attrs: Vec<String> = crate::labels::DEFAULT_CELEBA_ATTRS.iter().map(|s| s.to_string()).collect();
    let layout = LabelLayout::single(celeba_domain(&attrs));
    let nets = crate::train::StarGan::from_config(&cfg, layout.clone(), tch::Device::Cpu);
    Model {
        g: nets.g,
        layout,
        labels_known: true,
        image_size: Some(cfg.data.image_size),
        d: Some(nets.d),
        meta: None,
    }
}

fn post(addr: SocketAddr, query: &str, image: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "POST /v1/translate?{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        image.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(image)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let line = out.split(|&b| b == b'\r').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `clients` closed-loop clients, `per_client` requests each, against a fresh server batching up
/// to `max_batch`.
pub fn run(
    image: &[u8],
    query: &str,
    clients: usize,
    per_client: usize,
    max_batch: usize,
    detect: bool,
) -> Result<Load> {
    let detector = if detect { Some(crate::face::Detector::find(None, tch::Device::Cpu)?) } else { None };
    let cfg = ServeConfig {
        addr: "127.0.0.1:0".parse().expect("an address"),
        token: None,
        public: false,
        allow_origins: Vec::new(),
        max_body_bytes: 20 << 20,
        max_pixels: 40_000_000,
        request_timeout: Duration::from_secs(120),
        header_timeout: Duration::from_secs(10),
        rate_per_client: 0.0,
        engine: EngineConfig {
            max_batch,
            batch_wait: Duration::from_millis(5),
            queue: clients * 2,
            precision: crate::precision::Precision::Fp32,
            detect: crate::face::DetectOptions::default(),
        },
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let model = built_in_model();
    let server = std::thread::spawn(move || {
        crate::serve::serve_until(
            cfg,
            model,
            detector,
            move |a| {
                let _ = ready_tx.send(a);
            },
            async move {
                let _ = stop_rx.await;
            },
        )
    });
    let addr = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| Error::Internal("the server did not start".into()))?;
    // One untimed request per client warms the kernels.
    let _ = post(addr, query, image);
    let t = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (image, query) = (image.to_vec(), query.to_string());
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|_| {
                        let t = Instant::now();
                        let ok = post(addr, &query, &image).map(|c| c == 200).unwrap_or(false);
                        (t.elapsed().as_secs_f64() * 1e3, ok)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut failed = 0;
    for h in handles {
        for (ms, ok) in h.join().map_err(|_| Error::Internal("a client thread panicked".into()))? {
            times.push(ms);
            failed += usize::from(!ok);
        }
    }
    let wall = t.elapsed().as_secs_f64();
    // The batches the worker ran, from the metrics endpoint.
    let metrics = {
        let mut s = TcpStream::connect(addr).map_err(|e| Error::Internal(e.to_string()))?;
        let _ = s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let mean_batch = match (value("stargan_batch_size_sum"), value("stargan_batch_size_count")) {
        (Some(s), Some(c)) if c > 0.0 => s / c,
        _ => f64::NAN,
    };
    let _ = stop_tx.send(());
    server.join().map_err(|_| Error::Internal("the server thread panicked".into()))??;
    times.sort_by(f64::total_cmp);
    Ok(Load {
        clients,
        requests: times.len(),
        failed,
        p50_ms: quantile(&times, 0.5),
        p99_ms: quantile(&times, 0.99),
        per_second: times.len() as f64 / wall,
        mean_batch,
    })
}

/// The report's rows: dynamic batching against batch size 1 at 32 clients on aligned crops, and
/// 100 clients uploading the whole photo (detection and paste-back included).
pub fn report(per_client: usize) -> Result<String> {
    let photo = super::test_photo("astronaut.png")?;
    let png = |img: &image::RgbImage| {
        crate::image_io::encode_rgb8(
            img.as_raw(),
            img.width(),
            img.height(),
            crate::image_io::ImageFormat::Png,
        )
    };
    let detector = crate::face::Detector::find(None, tch::Device::Cpu)?;
    let faces = crate::face::find_faces(
        &detector,
        &photo,
        &crate::face::DetectOptions::default(),
        crate::face::Which::All,
    )?;
    let crop = png(&faces[0].image)?;
    let whole = png(&photo)?;
    let q = "set=Blond_Hair=1&set=Male=0";
    let mut out =
        String::from("serve load        clients  requests  failed  p50 ms   p99 ms   req/s   mean G batch\n");
    let row = |name: &str, l: &Load| {
        format!(
            "{name:<17} {:>7} {:>9} {:>7} {:>7.1} {:>8.1} {:>7.1} {:>13.2}\n",
            l.clients, l.requests, l.failed, l.p50_ms, l.p99_ms, l.per_second, l.mean_batch
        )
    };
    let single = run(&crop, q, 32, per_client, 1, false)?;
    let dynamic = run(&crop, q, 32, per_client, 16, false)?;
    out += &row("crop, batch 1", &single);
    out += &row("crop, dynamic", &dynamic);
    out += &format!(
        "dynamic batching / batch size 1 at 32 clients: {:.2}x requests per second\n",
        dynamic.per_second / single.per_second
    );
    let photos = run(&whole, q, 100, per_client.div_ceil(4).max(1), 16, true)?;
    out += &row("photo, dynamic", &photos);
    out += "(crop: the astronaut's 178×218 aligned crop, decode + G + encode; photo: the 512² astronaut, with detection, alignment and paste-back)\n";
    Ok(out)
}
