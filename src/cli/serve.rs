//! `stargan serve`: flags → [`crate::serve::ServeConfig`], the model and detector loaded, the URL
//! printed.

use super::translate::FaceArgs;
use crate::checkpoint::native;
use crate::error::{Error, Result};
use crate::serve::engine::EngineConfig;
use crate::serve::ServeConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Any checkpoint `translate` reads [default: the newest of the built-in run, runs/synthetic/models/].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Attribute names of a reference checkpoint's labels [default: the reference's five].
    #[arg(long, value_delimiter = ',')]
    pub attrs: Option<Vec<String>>,
    /// Where to listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The access token API requests must carry (`Authorization: Bearer …`); required to bind a
    /// non-loopback address unless --public. Also read from STARGAN_TOKEN.
    #[arg(long, env = "STARGAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve a non-loopback address without a token.
    #[arg(long)]
    pub public: bool,
    /// Another origin whose pages may call the API (repeatable); by default only the page's own.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// The largest G batch.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// How long a request waits for others to batch with, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Requests that may wait for the worker; beyond them the answer is 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// The largest upload, in MiB.
    #[arg(long, default_value_t = 20)]
    pub max_upload_mb: usize,
    /// The most pixels an upload may decode to, in megapixels.
    #[arg(long, default_value_t = 40.0)]
    pub max_megapixels: f64,
    /// Time a request may take, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Time a client has to send a request's headers, in seconds (slower ones are dropped).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Requests per second per client address (bursts of twice that; 0: no limit).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[command(flatten)]
    pub faces: FaceArgs,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::config::DeviceChoice,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: crate::precision::Precision,
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let model = match &args.checkpoint {
        Some(path) => crate::inference::load(path, args.attrs.as_deref(), device)?,
        None => {
            let dir = crate::config::TrainConfig::synthetic_default().output.model_save_dir;
            match native::latest_valid(&dir) {
                (Some((it, loaded)), _) => {
                    let path = native::path_for(&dir, it);
                    eprintln!("serving {}", path.display());
                    crate::inference::from_training(&loaded, &path, device)?
                }
                (None, _) => {
                    return Err(Error::Input(format!(
                        "no checkpoint in {}: train the built-in model first (`stargan train`) or give --checkpoint",
                        dir.display()
                    )))
                }
            }
        }
    };
    // The page works without faces (whole images); say so rather than refuse.
    let detector = match args.faces.detector(device) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("warning: {}; photos are translated whole", super::with_flag_names(&e.to_string()));
            None
        }
    };
    let positive = |v: f64, what: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(Error::Input(format!("--{what} must be a positive number, not {v}")))
        }
    };
    if args.max_batch == 0 || args.queue == 0 {
        return Err(Error::Input("--max-batch and --queue must be at least 1".into()));
    }
    let cfg = ServeConfig {
        addr: args.addr,
        token: args.token.clone().filter(|t| !t.is_empty()),
        public: args.public,
        allow_origins: args.allow_origins.clone(),
        max_body_bytes: args.max_upload_mb.saturating_mul(1 << 20),
        max_pixels: (positive(args.max_megapixels, "max-megapixels")? * 1e6) as u64,
        request_timeout: Duration::from_secs_f64(positive(args.timeout, "timeout")?.min(3600.0)),
        header_timeout: Duration::from_secs_f64(positive(args.header_timeout, "header-timeout")?.min(3600.0)),
        rate_per_client: if args.rate == 0.0 { 0.0 } else { positive(args.rate, "rate")? },
        engine: EngineConfig {
            max_batch: args.max_batch,
            batch_wait: Duration::from_millis(args.batch_wait_ms),
            queue: args.queue,
            precision: args.precision,
            detect: args.faces.options(),
        },
    };
    let token = cfg.token.clone();
    crate::serve::serve(cfg, model, detector, move |addr| {
        // Percent-encoded: the page reads it with URLSearchParams, which turns `+` into a space.
        let encode = |t: &str| -> String {
            t.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let fragment = token.map(|t| format!("#token={}", encode(&t))).unwrap_or_default();
        println!("listening on http://{addr}/{fragment}");
    })
    .map_err(|e| Error::Input(super::with_flag_names(&e.to_string())))
}
