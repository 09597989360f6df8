//! `stargan`: train, test and use StarGAN models.

use anyhow::Result;
use clap::{Parser, Subcommand};
use stargan::cli::train::Ran;
use stargan::cli::translate::{ExportArgs, InfoArgs, TranslateArgs};
use stargan::cli::RunArgs;
use stargan::train::Outcome;

#[derive(Parser)]
#[command(name = "stargan", version, about = "StarGAN: multi-domain image-to-image translation on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train G and D (with no dataset flags: the built-in synthetic faces, CPU-sized).
    Train(Box<RunArgs>),
    /// Translate the test split with a trained model (grids and one image per input and target).
    Test(Box<RunArgs>),
    /// Write the built-in faces in CelebA's or RaFD's layout.
    Synth(stargan::cli::synth::SynthArgs),
    /// Time training steps, translation and the loader (optionally against the PyTorch reference).
    Bench(Box<stargan::cli::bench::BenchArgs>),
    /// Measure a trained generator: target-domain accuracy, ground-truth error, reconstruction, classifier Fréchet distance.
    Eval(Box<stargan::cli::eval::EvalArgs>),
    /// Translate an image or a folder with a trained generator.
    Translate(TranslateArgs),
    /// Find the faces in photos and write them as CelebA-style 178×218 aligned crops, with landmarks.
    Align(stargan::cli::align::AlignArgs),
    /// Serve a web page and an HTTP API for translating photos (faces found, batched, bounded).
    Serve(Box<stargan::cli::serve::ServeArgs>),
    /// Describe a checkpoint: its format, inferred architecture and parameter counts.
    Info(InfoArgs),
    /// Write a training checkpoint's G and D with the reference's keys (safetensors or .ckpt).
    Export(ExportArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STARGAN_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
}

fn set_threads(threads: usize) {
    let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    tch::set_num_threads(n as i32);
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => {
            let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            match stargan::cli::train::train(&args, &raw)? {
                // Ranks other than 0 print nothing: rank 0 speaks for the run.
                Ran::Trained { rank, .. } if rank > 0 => {}
                Ran::Trained { outcome: Outcome::Finished { iterations }, world, .. } => println!(
                    "trained {iterations} iterations{}; checkpoints in {}",
                    if world > 1 { format!(" on {world} ranks") } else { String::new() },
                    args.resolve()?.output.model_save_dir.display()
                ),
                Ran::Trained { outcome: Outcome::Interrupted { iteration, checkpoint }, .. } => println!(
                    "stopped at iteration {iteration}; saved {}; continue with --resume-iters {iteration}",
                    checkpoint.display()
                ),
                Ran::Launched { .. } => {}
            }
        }
        Command::Test(args) => {
            if args.nproc_per_node.is_some() {
                anyhow::bail!("--nproc-per-node is for `stargan train`; `stargan test` runs as one process");
            }
            let cfg = args.resolve()?;
            set_threads(cfg.threads);
            let n = stargan::cli::test::test(&cfg)?;
            println!("translated {n} test images into {}", cfg.output.result_dir.display());
        }
        Command::Synth(args) => {
            let written = stargan::cli::synth::synth(&args)?;
            println!("wrote {} files under {}", written.len(), args.out.display());
        }
        Command::Bench(args) => print!("{}", stargan::cli::bench::bench(&args)?),
        Command::Translate(args) => {
            set_threads(0);
            for path in stargan::cli::translate::translate(&args)? {
                println!("{}", path.display());
            }
        }
        Command::Eval(args) => {
            stargan::cli::eval::eval(&args)?;
        }
        Command::Align(args) => {
            set_threads(0);
            let s = stargan::cli::align::align(&args)?;
            println!(
                "{} photos aligned now ({} done before); {} crops in {}, landmarks in {}",
                s.photos,
                s.skipped,
                s.crops,
                args.output.display(),
                s.landmarks.display()
            );
            if !s.skipped_inputs.is_empty() {
                let names: Vec<&str> = s.skipped_inputs.iter().map(|(n, _)| n.as_str()).collect();
                println!("skipped {} photos (reasons above): {}", names.len(), names.join(", "));
            }
        }
        Command::Serve(args) => {
            set_threads(0);
            stargan::cli::serve::serve(&args)?;
        }
        Command::Info(args) => print!("{}", stargan::cli::translate::info(&args)?),
        Command::Export(args) => {
            for path in stargan::cli::translate::export(&args)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

fn main() {
    init_logging();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {}", stargan::cli::with_flag_names(&e.to_string()));
        std::process::exit(1);
    }
}
