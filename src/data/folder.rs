//! torchvision's `ImageFolder` layout: `root/<class>/**/<image>`.
//!
//! The reference trains on RaFD (and any custom single-label data set) through
//! `torchvision.datasets.ImageFolder`, whose sample order and class indices we
//! reproduce so that labels mean the same thing in both implementations:
//!
//! * classes are `sorted(entry.name for entry in os.scandir(root) if entry.is_dir())`
//!   (symlinks to directories count, hidden directories too) and a class's
//!   index is its position in that list;
//! * per class, in class order, `make_dataset` walks
//!   `sorted(os.walk(class_dir, followlinks=True))` — i.e. directories ordered
//!   by their *full path string* — and within each directory takes
//!   `sorted(fnames)` whose lower-cased name ends with one of
//!   [`IMG_EXTENSIONS`];
//! * a class folder without any image is an error ("Found no valid file for
//!   the classes ..."), as is a root without class folders.
//!
//! Python sorts `str` by code point, which for UTF-8 byte strings is the same
//! as byte order; we therefore compare `OsStr`s (bytes on Unix), never `Path`s,
//! whose component-wise ordering differs (`"a/b" < "a b"` as paths but not as
//! strings: `sub/deeper` sorts after `sub b`). Unlike `os.walk`, unreadable sub-directories are reported rather
//! than silently skipped, and symlink cycles are visited once instead of
//! recursing until the path is too long.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};

/// torchvision's `IMG_EXTENSIONS`, matched case-insensitively.
///
/// Only PNG and JPEG can be decoded by this build ([`super::transform::load_image`]
/// reports the others clearly); they are still listed so that the sample set and
/// indices match torchvision.
pub const IMG_EXTENSIONS: [&str; 9] =
    [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"];

/// True if `name` ends with an image extension (case-insensitive), like
/// torchvision's `has_file_allowed_extension`.
pub fn has_image_extension(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

/// A class-per-folder image data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    /// The directory the data set was read from.
    pub root: PathBuf,
    /// Class names (sorted folder names); the index is the class label.
    pub classes: Vec<String>,
    /// `(image path, class index)` in torchvision's order.
    pub samples: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    /// Scans `root` the way `torchvision.datasets.ImageFolder(root)` does.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let mut class_dirs: Vec<OsString> = Vec::new();
        for entry in read_dir(&root)? {
            let entry = entry.map_err(|e| DataError::io(&root, e))?;
            // `DirEntry.is_dir()` in Python follows symlinks; so does `metadata`.
            if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                class_dirs.push(entry.file_name());
            }
        }
        if class_dirs.is_empty() {
            return Err(DataError::Folder {
                path: root,
                message: "no class sub-folders found (expected root/<class>/<image>)".into(),
            });
        }
        class_dirs.sort();

        let mut classes = Vec::with_capacity(class_dirs.len());
        let mut samples = Vec::new();
        let mut empty_classes = Vec::new();
        for (index, dir_name) in class_dirs.into_iter().enumerate() {
            let name = dir_name.into_string().map_err(|raw| DataError::Folder {
                path: root.join(&raw),
                message: "class folder name is not valid UTF-8".into(),
            })?;
            let before = samples.len();
            for file in walk_sorted(&root.join(&name))? {
                samples.push((file, index));
            }
            if samples.len() == before {
                empty_classes.push(name.clone());
            }
            classes.push(name);
        }
        if !empty_classes.is_empty() {
            return Err(DataError::Folder {
                path: root,
                message: format!(
                    "no image files for the classes {}; supported extensions are {}",
                    empty_classes.join(", "),
                    IMG_EXTENSIONS.join(", ")
                ),
            });
        }
        Ok(Self { root, classes, samples })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True if there are no images (never the case for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The index of a class name, if it exists.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }
}

fn read_dir(dir: &Path) -> Result<std::fs::ReadDir> {
    std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))
}

/// Image files under `top` in `for root, _, fnames in sorted(os.walk(top,
/// followlinks=True)): for fname in sorted(fnames)` order.
fn walk_sorted(top: &Path) -> Result<Vec<PathBuf>> {
    // (directory, its non-directory entry names) for every directory reached.
    let mut dirs: Vec<(PathBuf, Vec<OsString>)> = Vec::new();
    let mut visited = HashSet::new();
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        // Following symlinks can revisit a directory (or loop); walk each once.
        if let Ok(canonical) = std::fs::canonicalize(&dir) {
            if !visited.insert(canonical) {
                continue;
            }
        }
        let mut files = Vec::new();
        for entry in read_dir(&dir)? {
            let entry = entry.map_err(|e| DataError::io(&dir, e))?;
            let path = entry.path();
            if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                pending.push(path);
            } else {
                // Like `os.walk`, anything that is not a directory (including a
                // dangling symlink) is a file name here.
                files.push(entry.file_name());
            }
        }
        dirs.push((dir, files));
    }
    // `sorted(os.walk(...))` orders the tuples by their root path *string*.
    dirs.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));

    let mut out = Vec::new();
    for (dir, mut files) in dirs {
        files.sort();
        out.extend(
            files.into_iter().filter(|f| has_image_extension(&f.to_string_lossy())).map(|f| dir.join(f)),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stargan-folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(has_image_extension("a.JPG"));
        assert!(has_image_extension("b.Tiff"));
        assert!(has_image_extension("c.webp"));
        assert!(!has_image_extension("d.gif"));
        assert!(!has_image_extension("jpg"));
    }

    #[test]
    fn order_matches_torchvision() {
        let root = scratch_dir("order");
        for rel in [
            "happy/b.png",
            "happy/a.JPG",
            "happy/notes.txt",
            "happy/sub/z.jpg",
            "happy/sub b/y.jpg",
            "happy/sub/deeper/d.png",
            "happy/B.png",
            "angry/x.jpeg",
            "Zed/q.webp",
        ] {
            touch(&root.join(rel));
        }
        let ds = ImageFolder::open(&root).unwrap();
        // Python: sorted(['happy', 'angry', 'Zed']) == ['Zed', 'angry', 'happy']
        assert_eq!(ds.classes, ["Zed", "angry", "happy"]);
        let rel: Vec<(String, usize)> = ds
            .samples
            .iter()
            .map(|(p, c)| (p.strip_prefix(&root).unwrap().to_string_lossy().into_owned(), *c))
            .collect();
        // Python 3.11 on the same tree:
        //   for root, _, f in sorted(os.walk('happy', followlinks=True)):
        //       for n in sorted(f): print(os.path.join(root, n))
        // visits 'happy', 'happy/sub', 'happy/sub b', 'happy/sub/deeper'
        // (' ' < '/'), and sorted(fnames) puts 'B.png' before 'a.JPG'.
        let want = [
            ("Zed/q.webp", 0),
            ("angry/x.jpeg", 1),
            ("happy/B.png", 2),
            ("happy/a.JPG", 2),
            ("happy/b.png", 2),
            ("happy/sub/z.jpg", 2),
            ("happy/sub b/y.jpg", 2),
            ("happy/sub/deeper/d.png", 2),
        ];
        let want: Vec<(String, usize)> = want.iter().map(|(p, c)| ((*p).to_owned(), *c)).collect();
        assert_eq!(rel, want);
        assert_eq!(ds.class_index("happy"), Some(2));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn empty_class_and_empty_root_are_errors() {
        let root = scratch_dir("empty");
        let e = ImageFolder::open(&root).unwrap_err().to_string();
        assert!(e.contains("no class sub-folders"), "{e}");
        touch(&root.join("a/img.png"));
        touch(&root.join("b/readme.md"));
        let e = ImageFolder::open(&root).unwrap_err().to_string();
        assert!(e.contains("classes b;"), "{e}");
        let e = ImageFolder::open(root.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
