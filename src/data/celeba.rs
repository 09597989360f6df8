//! Multi-label attribute data: CelebA's `list_attr_celeba.txt` and a plain CSV
//! alternative, plus the reference train/test split.
//!
//! # Reference behaviour reproduced
//!
//! The reference `CelebA.preprocess` (StarGAN, `data_loader.py`) does
//!
//! ```python
//! lines = [line.rstrip() for line in open(attr_path)]
//! all_attr_names = lines[1].split()
//! lines = lines[2:]
//! random.seed(1234)
//! random.shuffle(lines)
//! for i, line in enumerate(lines):
//!     ...label.append(values[idx] == '1') for each selected attribute...
//!     if (i+1) < 2000: test_dataset.append(...)
//!     else:            train_dataset.append(...)
//! ```
//!
//! so the test split is the first **1,999** rows after a Python `random`
//! shuffle seeded with 1234, and labels are 1 exactly where the file says `1`.
//! [`reference_split`] reproduces that bit for bit through
//! [`super::pyrandom::Random`]; shuffling parsed rows is equivalent to shuffling
//! the text lines because the shuffle only depends on the number of items.
//!
//! Unlike the reference we validate the file: a row with the wrong number of
//! values, or a value other than `1`/`-1` (or `0`), is an error naming the file
//! and line instead of a silently wrong label. Blank lines are skipped (the
//! reference would crash on them, so no reproducible behaviour is lost).
//!
//! # CSV format
//!
//! Users' own multi-label data can be given as CSV: a header line
//! `filename,attr1,attr2,...` then one row per image with `0`/`1` values
//! (`-1` is accepted as negative too, so a converted CelebA file also works).
//! Fields may be double-quoted (`"a,b.jpg"`, with `""` as an escaped quote).
//! CSV samples go through exactly the same split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::error::{DataError, Result};
use super::pyrandom::Random;

/// Seed of the reference split (`random.seed(1234)`).
pub const REFERENCE_SPLIT_SEED: u64 = 1234;

/// Size of the reference test split: `(i+1) < 2000` keeps indices `0..=1998`.
pub const REFERENCE_TEST_SIZE: usize = 1999;

/// How many missing file names an error message lists.
const MISSING_NAMES_SHOWN: usize = 5;

/// One labelled image: a file name relative to the image directory and one
/// 0/1 label per selected attribute, in the selected order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub filename: String,
    pub label: Vec<f32>,
}

/// Which on-disk syntax an attribute file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AttrFormat {
    /// `list_attr_celeba.txt`: count line, names line, whitespace-separated rows.
    CelebA,
    /// `filename,attr1,...` header and comma-separated 0/1 rows.
    Csv,
}

impl AttrFormat {
    /// Picks the format from the file extension (`.csv`, any case), falling
    /// back to the content: CelebA files start with a bare image count.
    pub fn detect(path: &Path, text: &str) -> Self {
        let is_csv_ext =
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if is_csv_ext {
            return Self::Csv;
        }
        let first = text.trim_start_matches('\u{feff}').lines().next().unwrap_or("");
        if first.trim().parse::<u64>().is_err() && first.contains(',') {
            Self::Csv
        } else {
            Self::CelebA
        }
    }
}

/// A parsed attribute file: every row with every attribute, before selection.
#[derive(Debug, Clone)]
pub struct AttributeTable {
    /// The file the table came from (used in error messages).
    pub path: PathBuf,
    /// All attribute names, in file order.
    pub attr_names: Vec<String>,
    /// CelebA's first line (the declared image count); `None` for CSV. The
    /// reference ignores it, so we only expose it for a consistency warning.
    pub declared_count: Option<usize>,
    filenames: Vec<String>,
    /// Row-major `filenames.len() x attr_names.len()` positive flags.
    values: Vec<bool>,
}

/// The rows seen so far, to refuse a file listed twice.
#[derive(Default)]
struct Rows {
    seen: std::collections::HashMap<String, (usize, Vec<bool>)>,
}

impl Rows {
    /// A row's file name must stay inside the image folder (relative, no `..`), and name a file
    /// not listed before.
    fn check(&mut self, name: &str, values: &[bool], line: usize) -> std::result::Result<(), String> {
        let p = Path::new(name);
        let drive = name.len() >= 2 && name.as_bytes()[1] == b':' && name.as_bytes()[0].is_ascii_alphabetic();
        if p.is_absolute() || name.starts_with(['/', '\\']) || drive {
            return Err(format!("{name}: an image name must be relative to the image folder"));
        }
        if p.components().any(|c| matches!(c, std::path::Component::ParentDir))
            || name.split(['/', '\\']).any(|c| c == "..")
        {
            return Err(format!("{name}: an image name may not leave the image folder (`..`)"));
        }
        if let Some((first, before)) = self.seen.insert(name.to_owned(), (line, values.to_vec())) {
            let how = if before == values { "again" } else { "again, with other labels" };
            return Err(format!("{name} is listed {how} (first on line {first})"));
        }
        Ok(())
    }
}

impl AttributeTable {
    /// Reads and parses an attribute file, detecting its format
    /// (see [`AttrFormat::detect`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        match AttrFormat::detect(path, &text) {
            AttrFormat::CelebA => Self::parse_celeba(&text, path),
            AttrFormat::Csv => Self::parse_csv(&text, path),
        }
    }

    /// Parses the text of a `list_attr_celeba.txt`-style file; `path` is only
    /// used in error messages.
    pub fn parse_celeba(text: &str, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let err = |line: usize, message: String| DataError::Parse { path: path.clone(), line, message };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));

        let (_, count_line) =
            lines.next().ok_or_else(|| err(1, "file is empty; expected the image count".into()))?;
        let count_line = count_line.trim_start_matches('\u{feff}').trim();
        let declared_count = count_line.parse::<usize>().map_err(|_| {
            err(
                1,
                format!("expected the image count, found {count_line:?} (is this a CSV file? name it *.csv)"),
            )
        })?;

        let (_, names_line) = lines.next().ok_or_else(|| err(2, "missing the attribute-name line".into()))?;
        let attr_names: Vec<String> = names_line.split_whitespace().map(str::to_owned).collect();
        check_names(&attr_names).map_err(|m| err(2, m))?;

        let n_attrs = attr_names.len();
        let mut filenames = Vec::with_capacity(declared_count.min(1 << 20));
        let mut values = Vec::with_capacity(filenames.capacity().saturating_mul(n_attrs).min(1 << 26));
        let mut rows = Rows::default();
        for (line_no, line) in lines {
            let mut fields = line.split_whitespace();
            let Some(filename) = fields.next() else {
                continue; // blank line
            };
            let before = values.len();
            for (k, v) in fields.enumerate() {
                if k >= n_attrs {
                    return Err(err(
                        line_no,
                        format!(
                            "{filename}: expected {n_attrs} attribute values, found {}",
                            line.split_whitespace().count() - 1
                        ),
                    ));
                }
                values.push(parse_flag(v).ok_or_else(|| {
                    err(
                        line_no,
                        format!("{filename}: attribute {} has value {v:?}; expected 1 or -1", attr_names[k]),
                    )
                })?);
            }
            let found = values.len() - before;
            if found != n_attrs {
                return Err(err(
                    line_no,
                    format!("{filename}: expected {n_attrs} attribute values, found {found}"),
                ));
            }
            rows.check(filename, &values[values.len() - n_attrs..], line_no).map_err(|m| err(line_no, m))?;
            filenames.push(filename.to_owned());
        }
        if filenames.is_empty() {
            return Err(DataError::Empty { path, reason: "the attribute file has no image rows".into() });
        }
        Ok(Self { path, attr_names, declared_count: Some(declared_count), filenames, values })
    }

    /// Parses CSV text (`filename,attr1,...` header, 0/1 rows); `path` is only
    /// used in error messages.
    pub fn parse_csv(text: &str, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let err = |line: usize, message: String| DataError::Parse { path: path.clone(), line, message };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));

        // The header is the first non-blank line.
        let (header_no, header) = lines
            .by_ref()
            .map(|(n, l)| (n, l.trim_start_matches('\u{feff}')))
            .find(|(_, l)| !l.trim().is_empty())
            .ok_or_else(|| err(1, "file is empty; expected a header `filename,attr1,...`".into()))?;
        let header = split_csv_line(header).map_err(|m| err(header_no, m))?;
        if header.len() < 2 {
            return Err(err(
                header_no,
                "header needs a file-name column and at least one attribute column".into(),
            ));
        }
        let attr_names: Vec<String> = header[1..].to_vec();
        check_names(&attr_names).map_err(|m| err(header_no, m))?;

        let n_attrs = attr_names.len();
        let mut filenames = Vec::new();
        let mut values = Vec::new();
        let mut rows = Rows::default();
        for (line_no, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields = split_csv_line(line).map_err(|m| err(line_no, m))?;
            let filename = &fields[0];
            if filename.is_empty() {
                return Err(err(line_no, "empty file name".into()));
            }
            if fields.len() != n_attrs + 1 {
                return Err(err(
                    line_no,
                    format!("{filename}: expected {n_attrs} attribute values, found {}", fields.len() - 1),
                ));
            }
            for (name, v) in attr_names.iter().zip(&fields[1..]) {
                values.push(parse_flag(v).ok_or_else(|| {
                    err(line_no, format!("{filename}: attribute {name} has value {v:?}; expected 0 or 1"))
                })?);
            }
            rows.check(filename, &values[values.len() - n_attrs..], line_no).map_err(|m| err(line_no, m))?;
            filenames.push(filename.clone());
        }
        if filenames.is_empty() {
            return Err(DataError::Empty {
                path,
                reason: "the CSV file has a header but no image rows".into(),
            });
        }
        Ok(Self { path, attr_names, declared_count: None, filenames, values })
    }

    /// Number of image rows.
    pub fn len(&self) -> usize {
        self.filenames.len()
    }

    /// Always false for a successfully parsed table (empty files are errors);
    /// provided for API completeness.
    pub fn is_empty(&self) -> bool {
        self.filenames.is_empty()
    }

    /// Image file names in file order.
    pub fn filenames(&self) -> &[String] {
        &self.filenames
    }

    /// Maps selected attribute names to column indices, rejecting unknown
    /// names (the error lists the valid ones), duplicates and an empty list.
    pub fn select<S: AsRef<str>>(&self, selected: &[S]) -> Result<Vec<usize>> {
        if selected.is_empty() {
            return Err(DataError::Selection("no attributes selected".into()));
        }
        let mut seen = HashSet::new();
        selected
            .iter()
            .map(|s| {
                let name = s.as_ref();
                if !seen.insert(name) {
                    return Err(DataError::Selection(format!("attribute {name:?} is selected twice")));
                }
                self.attr_names.iter().position(|a| a == name).ok_or_else(|| DataError::UnknownAttribute {
                    path: self.path.clone(),
                    name: name.to_owned(),
                    valid: self.attr_names.clone(),
                })
            })
            .collect()
    }

    /// All rows as samples (file order), labelled with the selected attributes
    /// in the selected order: 1.0 where the file says positive, else 0.0.
    pub fn samples<S: AsRef<str>>(&self, selected: &[S]) -> Result<Vec<Sample>> {
        let idx = self.select(selected)?;
        let n_attrs = self.attr_names.len();
        Ok(self
            .filenames
            .iter()
            .enumerate()
            .map(|(row, filename)| {
                let flags = &self.values[row * n_attrs..(row + 1) * n_attrs];
                Sample {
                    filename: filename.clone(),
                    label: idx.iter().map(|&i| f32::from(u8::from(flags[i]))).collect(),
                }
            })
            .collect())
    }
}

/// The two halves of a data set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    pub train: Vec<Sample>,
    pub test: Vec<Sample>,
}

/// Shuffles `samples` with Python's `random.seed(seed); random.shuffle(...)`
/// and puts the first `test_size` of the shuffled order into `test`, the rest
/// into `train` (both keep the shuffled order, as the reference lists do).
pub fn split(mut samples: Vec<Sample>, seed: u64, test_size: usize) -> Split {
    Random::new(seed).shuffle(&mut samples);
    let train = samples.split_off(test_size.min(samples.len()));
    Split { train, test: samples }
}

/// The reference CelebA split: seed 1234, first 1,999 shuffled rows are test.
///
/// With fewer than 2,000 rows everything lands in `test` and `train` is empty,
/// exactly like the reference; callers training on small custom data sets
/// should use [`split`] with a smaller `test_size`.
pub fn reference_split(samples: Vec<Sample>) -> Split {
    split(samples, REFERENCE_SPLIT_SEED, REFERENCE_TEST_SIZE)
}

/// Parses an attribute file (CelebA or CSV) and returns the reference split of
/// its samples labelled with `selected` attributes.
pub fn load_split<S: AsRef<str>>(attr_path: impl AsRef<Path>, selected: &[S]) -> Result<Split> {
    let table = AttributeTable::open(attr_path)?;
    Ok(reference_split(table.samples(selected)?))
}

/// Result of [`check_images`]: the samples whose image exists, and the names
/// of those that do not (empty unless missing images were skipped).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    pub samples: Vec<Sample>,
    pub missing: Vec<String>,
}

/// Checks that every sample's image exists under `image_dir`.
///
/// With `skip_missing == false` any missing image is an error listing how many
/// are missing and the first few names. With `skip_missing == true` they are
/// dropped and reported in [`Checked::missing`]; dropping *all* of them is an
/// error. Apply this after splitting so the surviving images keep their
/// reference split membership.
pub fn check_images(samples: Vec<Sample>, image_dir: &Path, skip_missing: bool) -> Result<Checked> {
    // One stat per image; parallel because CelebA has 202,599 of them and
    // network file systems make each stat slow.
    let exists: Vec<bool> = samples.par_iter().map(|s| image_dir.join(&s.filename).is_file()).collect();
    let total = samples.len();
    let n_missing = exists.iter().filter(|&&e| !e).count();
    if n_missing == 0 {
        return Ok(Checked { samples, missing: Vec::new() });
    }
    if !skip_missing {
        return Err(DataError::MissingImages {
            dir: image_dir.to_path_buf(),
            count: n_missing,
            total,
            first: samples
                .iter()
                .zip(&exists)
                .filter(|(_, e)| !**e)
                .take(MISSING_NAMES_SHOWN)
                .map(|(s, _)| s.filename.clone())
                .collect(),
        });
    }
    let mut checked = Checked::default();
    for (sample, present) in samples.into_iter().zip(exists) {
        if present {
            checked.samples.push(sample);
        } else {
            checked.missing.push(sample.filename);
        }
    }
    if checked.samples.is_empty() && total > 0 {
        return Err(DataError::Empty {
            path: image_dir.to_path_buf(),
            reason: format!("none of the {total} listed images exist"),
        });
    }
    Ok(checked)
}

/// `1` is positive; `-1` (CelebA) and `0` (CSV) are negative. Anything else is
/// rejected rather than silently read as negative like the reference does.
fn parse_flag(v: &str) -> Option<bool> {
    match v {
        "1" => Some(true),
        "-1" | "0" => Some(false),
        _ => None,
    }
}

fn check_names(names: &[String]) -> std::result::Result<(), String> {
    if names.is_empty() {
        return Err("no attribute names".into());
    }
    let mut seen = HashSet::new();
    for name in names {
        if name.is_empty() {
            return Err("empty attribute name".into());
        }
        if !seen.insert(name.as_str()) {
            return Err(format!("attribute {name:?} appears twice"));
        }
    }
    Ok(())
}

/// Splits one CSV line into trimmed fields, honouring double quotes.
fn split_csv_line(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut in_quotes = false;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => in_quotes = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                in_quotes = true;
                quoted = true;
            }
            (',', false) => {
                fields.push(finish_field(&mut field, quoted));
                quoted = false;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".into());
    }
    fields.push(finish_field(&mut field, quoted));
    Ok(fields)
}

fn finish_field(field: &mut String, quoted: bool) -> String {
    let f = std::mem::take(field);
    // Quoted content is kept verbatim; unquoted fields lose padding spaces.
    if quoted {
        f.trim_end().to_owned()
    } else {
        f.trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn celeba_text(n: usize, names: &[&str]) -> String {
        let mut s = format!("{n}\n{} \n", names.join(" "));
        for i in 1..=n {
            s.push_str(&format!("{i:06}.jpg"));
            for k in 0..names.len() {
                // Double spaces as in the real file; deterministic pattern.
                s.push_str(if (i + k) % 3 == 0 { "  1" } else { " -1" });
            }
            s.push('\n');
        }
        s
    }

    #[test]
    fn reference_split_matches_python_on_full_celeba_listing() {
        // python3.11: lines = ['%06d.jpg' % i for i in range(1, 202600)]
        //             random.seed(1234); random.shuffle(lines); lines[:5], lines[1999:2004]
        let text = celeba_text(202_599, &["A", "B"]);
        let table = AttributeTable::parse_celeba(&text, "list_attr_celeba.txt").unwrap();
        assert_eq!(table.len(), 202_599);
        assert_eq!(table.declared_count, Some(202_599));
        let split = reference_split(table.samples(&["A"]).unwrap());
        assert_eq!(split.test.len(), 1999);
        assert_eq!(split.train.len(), 202_599 - 1999);
        let names = |v: &[Sample]| v.iter().map(|s| s.filename.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&split.test[..5]),
            ["028136.jpg", "025600.jpg", "120849.jpg", "063578.jpg", "083306.jpg"]
        );
        assert_eq!(
            names(&split.train[..5]),
            ["062130.jpg", "192729.jpg", "081107.jpg", "192549.jpg", "187794.jpg"]
        );
        // python3.11: lines[1998], lines[-1]
        assert_eq!(split.test[1998].filename, "011165.jpg");
        assert_eq!(split.train.last().unwrap().filename, "115536.jpg");
        // Labels follow the rows through the shuffle: 028136 + 0 -> (28136 % 3 == 0)?
        assert_eq!(split.test[0].label, [f32::from(u8::from(28136 % 3 == 0))]);
    }

    #[test]
    fn labels_follow_selected_order() {
        let text = "2\nA B  C\nx.jpg 1 -1 1\ny.jpg  -1  1 -1\n";
        let t = AttributeTable::parse_celeba(text, "f.txt").unwrap();
        let s = t.samples(&["C", "A", "B"]).unwrap();
        assert_eq!(s[0].label, [1.0, 1.0, 0.0]);
        assert_eq!(s[1].label, [0.0, 0.0, 1.0]);
    }

    #[test]
    fn unknown_attribute_lists_valid_names() {
        let t = AttributeTable::parse_celeba("1\nBlack_Hair Male\na.jpg 1 1\n", "attrs.txt").unwrap();
        let e = t.samples(&["Blond_Hair"]).unwrap_err().to_string();
        assert!(e.contains("Blond_Hair") && e.contains("Black_Hair, Male"), "{e}");
        assert!(t.samples::<&str>(&[]).is_err());
        assert!(t.samples(&["Male", "Male"]).is_err());
    }

    #[test]
    fn malformed_celeba_rows_name_file_and_line() {
        let short = AttributeTable::parse_celeba("2\nA B\na.jpg 1 1\nb.jpg 1\n", "attrs.txt");
        let e = short.unwrap_err().to_string();
        assert!(e.starts_with("attrs.txt:4:") && e.contains("found 1"), "{e}");

        let long = AttributeTable::parse_celeba("1\nA B\na.jpg 1 1 1\n", "attrs.txt");
        assert!(long.unwrap_err().to_string().contains("attrs.txt:3:"));

        let bad = AttributeTable::parse_celeba("1\nA B\na.jpg 1 yes\n", "attrs.txt");
        let e = bad.unwrap_err().to_string();
        assert!(e.contains("attrs.txt:3:") && e.contains("attribute B"), "{e}");

        let count = AttributeTable::parse_celeba("abc\nA\n", "attrs.txt");
        assert!(count.unwrap_err().to_string().contains("attrs.txt:1:"));

        let empty = AttributeTable::parse_celeba("0\nA B\n\n", "attrs.txt");
        assert!(matches!(empty, Err(DataError::Empty { .. })));
        assert!(AttributeTable::parse_celeba("", "attrs.txt").is_err());
    }

    #[test]
    fn windows_line_endings_are_accepted() {
        let t = AttributeTable::parse_celeba("1\r\nA B \r\na.jpg  1 -1\r\n", "f").unwrap();
        assert_eq!(t.samples(&["B", "A"]).unwrap()[0].label, [0.0, 1.0]);
    }

    #[test]
    fn csv_parses_and_splits_like_celeba() {
        let mut csv = String::from("\u{feff}filename, Smiling ,Male\n");
        let mut txt = String::from("2500\nSmiling Male\n");
        for i in 0..2500 {
            csv.push_str(&format!("img{i}.png,{},{}\n", i % 2, (i / 2) % 2));
            txt.push_str(&format!("img{i}.png {} {}\n", [-1, 1][i % 2], [-1, 1][(i / 2) % 2]));
        }
        csv.push_str("\"we,ird \"\"name\"\".png\",1,0\n\n");
        txt.push_str("we,ird\"name\".png 1 -1\n"); // only for lengths; name differs
        let c = AttributeTable::parse_csv(&csv, "own.csv").unwrap();
        assert_eq!(c.attr_names, ["Smiling", "Male"]);
        assert_eq!(c.filenames()[2500], "we,ird \"name\".png");
        let t = AttributeTable::parse_celeba(&txt, "own.txt").unwrap();
        let sc = reference_split(c.samples(&["Male", "Smiling"]).unwrap());
        let st = reference_split(t.samples(&["Male", "Smiling"]).unwrap());
        assert_eq!(sc.test.len(), 1999);
        assert_eq!(sc.train.len(), 502);
        for (a, b) in sc.train.iter().zip(&st.train).chain(sc.test.iter().zip(&st.test)) {
            assert_eq!(a.label, b.label);
            if !a.filename.contains(',') {
                assert_eq!(a.filename, b.filename);
            }
        }
    }

    #[test]
    fn rows_outside_the_folder_or_listed_twice_are_refused() {
        let csv = |rows: &str| AttributeTable::parse_csv(&format!("filename,Smiling\n{rows}"), "a.csv");
        for (rows, mentions) in [
            ("/etc/passwd,1\n", "relative to the image folder"),
            ("../secret.jpg,1\n", "may not leave the image folder"),
            ("sub/../../x.jpg,0\n", "may not leave the image folder"),
            ("a.jpg,1\na.jpg,0\n", "again, with other labels (first on line 2)"),
            ("a.jpg,1\nb.jpg,1\na.jpg,1\n", "a.jpg is listed again"),
        ] {
            let err = csv(rows).unwrap_err().to_string();
            assert!(err.contains(mentions) && err.contains("a.csv:"), "{rows:?}: {err}");
        }
        assert!(csv("sub/a.jpg,1\nb.jpg,0\n").is_ok(), "sub-folders stay allowed");
        let text = "2\nSmiling\nx.jpg 1\nx.jpg -1\n";
        let err = AttributeTable::parse_celeba(text, "list.txt").unwrap_err().to_string();
        assert!(err.contains("list.txt:4") && err.contains("other labels"), "{err}");
    }

    #[test]
    fn csv_errors_name_file_and_line() {
        let e = AttributeTable::parse_csv("f,A\na.png,1\nb.png,2\n", "own.csv").unwrap_err();
        assert!(e.to_string().starts_with("own.csv:3:"), "{e}");
        let e = AttributeTable::parse_csv("f,A\na.png,1,0\n", "own.csv").unwrap_err();
        assert!(e.to_string().starts_with("own.csv:2:"), "{e}");
        let e = AttributeTable::parse_csv("f,A\n\"a.png,1\n", "own.csv").unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        assert!(AttributeTable::parse_csv("filename\n", "own.csv").is_err());
        assert!(matches!(AttributeTable::parse_csv("f,A\n", "own.csv"), Err(DataError::Empty { .. })));
    }

    #[test]
    fn format_detection() {
        assert_eq!(AttrFormat::detect(Path::new("a.CSV"), "3\nA\n"), AttrFormat::Csv);
        assert_eq!(AttrFormat::detect(Path::new("a.txt"), "f,A\n"), AttrFormat::Csv);
        assert_eq!(AttrFormat::detect(Path::new("a.txt"), "3\nA,B\n"), AttrFormat::CelebA);
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stargan-celeba-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn open_reads_files_and_reports_missing_ones() {
        let dir = scratch_dir("open");
        let csv = dir.join("attrs.csv");
        std::fs::write(&csv, "name,A,B\na.jpg,1,0\nb.jpg,0,1\nc.jpg,1,1\n").unwrap();
        let split = split(AttributeTable::open(&csv).unwrap().samples(&["B"]).unwrap(), 1, 1);
        assert_eq!((split.test.len(), split.train.len()), (1, 2));

        let missing = AttributeTable::open(dir.join("nope.txt")).unwrap_err().to_string();
        assert!(missing.contains("nope.txt"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_images_errors_or_skips() {
        let dir = scratch_dir("check");
        for name in ["a.jpg", "c.jpg"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let samples: Vec<Sample> = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
            .iter()
            .map(|n| Sample { filename: (*n).into(), label: vec![1.0] })
            .collect();
        let e = check_images(samples.clone(), &dir, false).unwrap_err().to_string();
        assert!(e.contains("2 of 4") && e.contains("b.jpg, d.jpg"), "{e}");

        let ok = check_images(samples.clone(), &dir, true).unwrap();
        assert_eq!(ok.missing, ["b.jpg", "d.jpg"]);
        assert_eq!(ok.samples.len(), 2);

        let none = check_images(samples[1..2].to_vec(), &dir, true);
        assert!(matches!(none, Err(DataError::Empty { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
