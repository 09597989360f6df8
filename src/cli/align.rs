//! `stargan align`: photos → `img_align_celeba`-style 178×218 crops, one per face, with a landmarks
//! file in CelebA's format, so one's own photos can become a training set for the CelebA or
//! folder loaders. Sub-folders are mirrored (class folders stay class folders). Interrupted, it
//! resumes: photos whose crops a previous run recorded are skipped.

use super::translate::FaceArgs;
use crate::error::{Error, Result};
use crate::face;
use crate::image_io::{encode_rgb8, ImageFormat};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct AlignArgs {
    /// A photo or a folder of photos (sub-folders included).
    #[arg(long)]
    pub input: PathBuf,
    /// The folder for the crops and `list_landmarks_align_celeba.txt`.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub faces: FaceArgs,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::config::DeviceChoice,
}

/// The landmarks file written beside the crops.
pub const LANDMARKS_FILE: &str = "list_landmarks_align_celeba.txt";
/// What a run has done, for resuming: photo → its crops and their landmark lines.
const JOURNAL: &str = ".stargan-align.json";

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// The input folder and the detection settings the entries were made with: a run with others
    /// starts afresh.
    input: String,
    settings: String,
    /// Input path relative to `--input` → (crop name, landmarks line) per face.
    done: BTreeMap<String, Vec<(String, String)>>,
    /// Inputs skipped this run (no face, unreadable), with why.
    skipped: BTreeMap<String, String>,
}

/// What `align` did.
pub struct Summary {
    pub photos: usize,
    pub crops: usize,
    pub skipped: usize,
    /// Inputs skipped, with why.
    pub skipped_inputs: Vec<(String, String)>,
    pub landmarks: PathBuf,
}

/// Every image under `root`, as paths relative to it, sorted; `exclude` (the output folder) is not
/// entered.
fn walk(root: &Path, exclude: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let exclude = exclude.canonicalize().ok();
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        if exclude.is_some() && dir.canonicalize().ok() == exclude {
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Read { path: dir.clone(), source })?;
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if n.starts_with('.') {
                continue;
            }
            let path = e.path();
            // Only real folders are entered (a symlinked one could loop).
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(rel.join(n));
            } else if path.is_file() && crate::data::folder::has_image_extension(n) {
                out.push(rel.join(n));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn slash(p: &Path) -> String {
    p.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

pub fn align(args: &AlignArgs) -> Result<Summary> {
    let device = args.device.resolve()?;
    let detector = args.faces.detector(device)?;
    let (root, inputs) = if args.input.is_dir() {
        (args.input.clone(), walk(&args.input, &args.output)?)
    } else if args.input.is_file() {
        let name = args.input.file_name().map(PathBuf::from).unwrap_or_default();
        (args.input.parent().map(Path::to_path_buf).unwrap_or_default(), vec![name])
    } else {
        return Err(Error::Input(format!("input {} does not exist", args.input.display())));
    };
    if inputs.is_empty() {
        return Err(Error::Input(format!("{} holds no images", args.input.display())));
    }
    std::fs::create_dir_all(&args.output)
        .map_err(|source| Error::Write { path: args.output.clone(), source })?;
    let journal_path = args.output.join(JOURNAL);
    let input_id = root.canonicalize().unwrap_or_else(|_| root.clone()).display().to_string();
    let settings = format!("min_face_size={} face={:?}", args.faces.min_face_size, args.faces.face);
    let mut journal: Journal = match std::fs::read_to_string(&journal_path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
        Err(_) => Journal::default(),
    };
    if journal.input != input_id || journal.settings != settings {
        journal = Journal { input: input_id, settings, ..Journal::default() };
    }
    // Two photos that would write the same crops (`a.jpg`, `a.png`): refused before any work.
    let mut stems = std::collections::HashMap::new();
    for rel in &inputs {
        let stem = rel.with_extension("");
        if let Some(first) = stems.insert(stem, rel) {
            return Err(Error::Input(format!(
                "{} and {} would both be written as {}_1.png; rename one",
                first.display(),
                rel.display(),
                slash(&rel.with_extension(""))
            )));
        }
    }
    // A recorded photo counts as done only while all its crops are still there.
    journal.done.retain(|_, crops| crops.iter().all(|(name, _)| args.output.join(name).is_file()));
    // Photos skipped before are looked at again.
    journal.skipped.clear();
    let save_journal = |j: &Journal| -> Result<()> {
        let text = serde_json::to_vec(j).map_err(|e| Error::Internal(e.to_string()))?;
        crate::files::write(&journal_path, &text)
    };
    let bar = indicatif::ProgressBar::new(inputs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} photos, {per_sec}, eta {eta} {msg}")
            .expect("valid template"),
    );
    let (mut photos, mut skipped) = (0, 0);
    let mut last_save = std::time::Instant::now();
    for rel in &inputs {
        bar.inc(1);
        let key = slash(rel);
        if journal.done.contains_key(&key) {
            skipped += 1;
            continue;
        }
        let src = root.join(rel);
        // One unreadable photo or one without the face asked for is reported and skipped.
        let faces = face::load_photo(&src)
            .and_then(|img| face::find_faces(&detector, &img, &args.faces.options(), args.faces.which()?));
        let faces = match faces {
            Ok(f) => f,
            Err(e)
                if e.kind() != crate::error::ErrorKind::Internal
                    && e.kind() != crate::error::ErrorKind::Io =>
            {
                let m = super::with_flag_names(&e.to_string());
                bar.suspend(|| eprintln!("{}: {m}", src.display()));
                journal.skipped.insert(key, m);
                continue;
            }
            Err(e) => return Err(e),
        };
        let stem = rel.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut files = Vec::new();
        let mut entries = Vec::new();
        for (k, f) in faces.iter().enumerate() {
            let name = slash(&parent.join(format!("{stem}_{}.png", k + 1)));
            let bytes = encode_rgb8(f.image.as_raw(), f.image.width(), f.image.height(), ImageFormat::Png)?;
            files.push((args.output.join(&name), bytes));
            entries.push((name.clone(), face::landmarks_line(&name, f)));
        }
        for (path, _) in &files {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|source| Error::Write { path: dir.to_path_buf(), source })?;
            }
        }
        crate::files::write_all_or_none(&files)?;
        journal.done.insert(key, entries);
        photos += 1;
        if last_save.elapsed().as_secs() >= 5 {
            save_journal(&journal)?;
            last_save = std::time::Instant::now();
        }
    }
    bar.finish_and_clear();
    save_journal(&journal)?;
    let lines: Vec<&String> = journal.done.values().flatten().map(|(_, line)| line).collect();
    let mut text = face::landmarks_header(lines.len());
    for l in &lines {
        text += l;
        text.push('\n');
    }
    let landmarks = args.output.join(LANDMARKS_FILE);
    crate::files::write(&landmarks, text.as_bytes())?;
    Ok(Summary {
        photos,
        crops: lines.len(),
        skipped,
        skipped_inputs: journal.skipped.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        landmarks,
    })
}
