//! The dependency invariants of ARCHITECTURE.md, checked on the source: a module that breaks one
//! fails here with the file and line.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `(file, line number, line)` of every code line under `dir` (relative to `src/`) that mentions
/// one of `needles`; comments are skipped.
fn mentions(dir: &str, needles: &[&str], except: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in sources(&src.join(dir)) {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        if except.iter().any(|e| rel.starts_with(e)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if needles.iter().any(|needle| code.contains(needle)) {
                found.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_finder_finds_what_it_looks_for() {
    // Guard against a check that passes because it looks nowhere.
    assert!(!mentions("cli", &["crate::"], &[]).is_empty());
    assert!(!mentions("", &["use tch"], &[]).is_empty());
}

#[test]
fn no_library_module_imports_the_cli() {
    let found = mentions("", &["crate::cli", "super::cli", "stargan::cli"], &["cli/", "main.rs"]);
    assert!(found.is_empty(), "the library imports the CLI:\n{}", found.join("\n"));
}

#[test]
fn data_checkpoint_model_face_serve_and_dist_know_nothing_of_training_or_flags() {
    for dir in ["data", "checkpoint", "model", "face", "serve", "dist"] {
        let found = mentions(dir, &["crate::train", "crate::cli", "clap"], &[]);
        assert!(found.is_empty(), "{dir}/ reaches up:\n{}", found.join("\n"));
    }
    for file in ["config.rs", "labels.rs", "precision.rs", "inference.rs", "image_io.rs"] {
        let found = mentions("", &["crate::train", "crate::cli", "clap"], &[])
            .into_iter()
            .filter(|l| l.starts_with(&format!("src/{file}:")))
            .collect::<Vec<_>>();
        assert!(found.is_empty(), "{file} reaches up:\n{}", found.join("\n"));
    }
}

#[test]
fn data_holds_no_tensors() {
    let found = mentions("data", &["tch::", "use tch"], &[]);
    assert!(found.is_empty(), "data/ uses tch:\n{}", found.join("\n"));
}

#[test]
fn library_messages_name_settings_by_key_not_by_flag() {
    // The library names a setting `like_this`; `cli::with_flag_names` shows it as --like-this.
    let found: Vec<String> = mentions("", &["\"--", " --"], &["cli/", "main.rs"])
        .into_iter()
        .filter(|l| !l.contains("setup.sh --cuda") && !l.contains("//"))
        .collect();
    assert!(found.is_empty(), "flag names in library messages:\n{}", found.join("\n"));
}
