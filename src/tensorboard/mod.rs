//! Minimal TensorBoard event-file writer and reader.
//!
//! TensorBoard reads `events.out.tfevents.*` files: a sequence of TFRecord
//! records, each holding one serialized `tensorboard.Event` protobuf
//! (`tensorboard/compat/proto/event.proto` and `summary.proto`).
//!
//! Only a small subset of the format is needed for training curves and sample
//! grids, so it is written by hand here instead of pulling in TensorFlow or a
//! protobuf code generator for three messages:
//!
//! * `Event`: `wall_time` (1, double), `step` (2, int64), `file_version`
//!   (3, string) and `summary` (5);
//! * `Summary`: repeated `value` (1);
//! * `Summary.Value`: `tag` (1) with either `simple_value` (2, float) or
//!   `image` (4);
//! * `Summary.Image`: `height` (1), `width` (2), `colorspace` (3) and
//!   `encoded_image_string` (4), here always an RGB PNG.
//!
//! The reader decodes the same subset, plus rank-0 `DT_FLOAT` tensors
//! (`Summary.Value.tensor`, field 8), which is how TensorFlow 2 and
//! `tensorboard.summary` write scalars. Everything else (graphs, histograms,
//! audio, other tensors) is skipped or reported as [`ValueData::Other`].
//! Both CRCs of every record are checked, and malformed input yields a
//! [`TbError`], never a panic.
//!
//! TFRecord framing of one record:
//!
//! ```text
//! u64 length (LE) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(any(test, feature = "tensorboard-reader"))]
mod reader;
#[cfg(any(test, feature = "tensorboard-reader"))]
pub use reader::*;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

/// Version string TensorBoard expects in the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// `Summary.Image.colorspace` value for RGB.
const COLORSPACE_RGB: u32 = 3;

/// Errors from writing or reading event files.
#[derive(Debug, thiserror::Error)]
pub enum TbError {
    #[error("event file I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("record at byte {offset}: length CRC mismatch (corrupted file)")]
    LengthCrc { offset: u64 },
    #[error("record at byte {offset}: data CRC mismatch (corrupted file)")]
    DataCrc { offset: u64 },
    #[error("record at byte {offset} is truncated (file cut short or still being written)")]
    Truncated { offset: u64 },
    #[error("record at byte {offset}: malformed Event protobuf: {reason}")]
    Proto { offset: u64, reason: &'static str },
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error("PNG encoding failed: {0}")]
    Png(#[from] image::ImageError),
}

/// Appends TensorBoard events to a new event file in a log directory.
///
/// Records are buffered: call [`EventWriter::flush`] to make them visible to
/// a running TensorBoard. Dropping the writer flushes on a best-effort basis.
#[derive(Debug)]
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `log_dir` if needed and a new
    /// `events.out.tfevents.<unix_secs>.<hostname>` file in it, starting with
    /// the `file_version` event.
    ///
    /// An existing file is never overwritten: if two writers start in the same
    /// second, the later one gets a `.1`, `.2`, ... suffix (TensorBoard reads
    /// any file whose name contains `tfevents`).
    pub fn create(log_dir: &Path) -> Result<Self, TbError> {
        std::fs::create_dir_all(log_dir)?;
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let base = format!("events.out.tfevents.{secs}.{}", hostname());
        let (file, path) = create_unique(log_dir, &base)?;
        let mut writer = Self { out: BufWriter::new(file), path };
        writer.write_event(0, |event| event.bytes(3, FILE_VERSION.as_bytes()))?;
        Ok(writer)
    }

    /// Path of the event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one scalar.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<(), TbError> {
        self.add_scalars(&[(tag, value)], step)
    }

    /// Logs several scalars as one event (one `Summary` with several values).
    pub fn add_scalars<S: AsRef<str>>(&mut self, scalars: &[(S, f32)], step: i64) -> Result<(), TbError> {
        if scalars.is_empty() {
            return Ok(());
        }
        let mut summary = ProtoWriter::default();
        for (tag, value) in scalars {
            let mut v = ProtoWriter::default();
            v.bytes(1, tag.as_ref().as_bytes());
            // Always written, even for 0.0: `simple_value` is a oneof member,
            // so its presence is what marks the value as a scalar.
            v.float(2, *value);
            summary.bytes(1, &v.buf);
        }
        self.write_event(step, |event| event.bytes(5, &summary.buf))
    }

    /// Logs an RGB image (`width * height * 3` bytes, row-major) as a PNG.
    pub fn add_image(
        &mut self,
        tag: &str,
        rgb: &[u8],
        width: u32,
        height: u32,
        step: i64,
    ) -> Result<(), TbError> {
        let expected = u64::from(width) * u64::from(height) * 3;
        if width == 0 || height == 0 || rgb.len() as u64 != expected {
            return Err(TbError::InvalidImage(format!(
                "{width}x{height} RGB image needs {expected} bytes, got {}",
                rgb.len()
            )));
        }
        let mut png = Vec::new();
        PngEncoder::new(&mut png).write_image(rgb, width, height, ExtendedColorType::Rgb8)?;

        let mut img = ProtoWriter::default();
        img.varint_field(1, u64::from(height));
        img.varint_field(2, u64::from(width));
        img.varint_field(3, u64::from(COLORSPACE_RGB));
        img.bytes(4, &png);
        let mut value = ProtoWriter::default();
        value.bytes(1, tag.as_bytes());
        value.bytes(4, &img.buf);
        let mut summary = ProtoWriter::default();
        summary.bytes(1, &value.buf);
        self.write_event(step, |event| event.bytes(5, &summary.buf))
    }

    /// Writes buffered records to the file.
    pub fn flush(&mut self) -> Result<(), TbError> {
        self.out.flush()?;
        Ok(())
    }

    /// Writes one `Event` with the current wall time; `what` adds the oneof
    /// payload (file_version or summary).
    fn write_event(&mut self, step: i64, what: impl FnOnce(&mut ProtoWriter)) -> Result<(), TbError> {
        let wall_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut event = ProtoWriter::default();
        event.double(1, wall_time);
        // int64 is encoded as the two's-complement varint of the value.
        event.varint_field(2, step as u64);
        what(&mut event);
        write_record(&mut self.out, &event.buf)?;
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; callers wanting them call flush().
        let _ = self.out.flush();
    }
}

/// CRC32C masked as TFRecord does it, so that CRCs of data that itself
/// contains CRCs stay well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn write_record(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    w.write_all(&len)?;
    w.write_all(&masked_crc(&len).to_le_bytes())?;
    w.write_all(data)?;
    w.write_all(&masked_crc(data).to_le_bytes())
}

/// The machine's hostname for the file name, as TensorFlow's writers use it.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        // The name becomes part of a file name: reject anything odd.
        .filter(|h| !h.is_empty() && !h.contains(['/', '\\', '\0']))
        .unwrap_or_else(|| "localhost".to_owned())
}

fn create_unique(dir: &Path, base: &str) -> io::Result<(File, PathBuf)> {
    let mut suffix = 0u32;
    loop {
        let name = if suffix == 0 { base.to_owned() } else { format!("{base}.{suffix}") };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && suffix < 1000 => suffix += 1,
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Protobuf wire format: just the pieces the messages above need.
// ---------------------------------------------------------------------------

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// Serializes fields of one message; nested messages are built in their own
/// writer and embedded as length-delimited bytes.
#[derive(Default)]
struct ProtoWriter {
    buf: Vec<u8>,
}

impl ProtoWriter {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u64) {
        self.varint((u64::from(field) << 3) | wire_type);
    }

    fn varint_field(&mut self, field: u32, v: u64) {
        self.key(field, WIRE_VARINT);
        self.varint(v);
    }

    fn double(&mut self, field: u32, v: f64) {
        self.key(field, WIRE_FIXED64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn float(&mut self, field: u32, v: f32) {
        self.key(field, WIRE_FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.key(field, WIRE_LEN);
        self.varint(data.len() as u64);
        self.buf.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::reader::{parse_value, DT_FLOAT};
    use super::*;

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tb-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A small RGB gradient, distinct per pixel so decoding errors show.
    fn test_image(width: u32, height: u32) -> Vec<u8> {
        (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [(x * 40) as u8, (y * 60) as u8, 200]))
            .collect()
    }

    /// Writes the file_version event, two scalar events and an image event.
    fn write_sample(dir: &Path) -> PathBuf {
        let mut w = EventWriter::create(dir).unwrap();
        w.add_scalar("loss/D", 0.0, 0).unwrap();
        w.add_scalars(&[("loss/G", 1.5), ("loss/cls", -2.25)], 10).unwrap();
        w.add_image("samples", &test_image(5, 3), 5, 3, 10).unwrap();
        w.flush().unwrap();
        w.path().to_owned()
    }

    #[test]
    fn file_name_and_version_event() {
        let dir = temp_dir("name");
        let first = EventWriter::create(&dir).unwrap().path().to_owned();
        let name = first.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let secs = name["events.out.tfevents.".len()..].split('.').next().unwrap();
        assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);

        // A second writer in the same second must not clobber the first file.
        let second = EventWriter::create(&dir).unwrap().path().to_owned();
        assert_ne!(first, second);

        let events = read_events(&first).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(events[0].values.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn scalars_and_image_round_trip() {
        let dir = temp_dir("roundtrip");
        let events = read_events(&write_sample(&dir)).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));

        assert_eq!(events[1].step, 0);
        assert_eq!(events[1].scalars().collect::<Vec<_>>(), [("loss/D", 0.0)]);
        assert!(events[1].wall_time > 1.6e9);

        // add_scalars puts all values in one event.
        assert_eq!(events[2].step, 10);
        assert_eq!(events[2].scalar("loss/G"), Some(1.5));
        assert_eq!(events[2].scalar("loss/cls"), Some(-2.25));
        assert_eq!(events[2].scalar("missing"), None);

        let (tag, img) = events[3].images().next().unwrap();
        assert_eq!((tag, img.width, img.height, img.colorspace), ("samples", 5, 3, 3));
        let decoded = image::load_from_memory(&img.encoded).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (5, 3));
        assert_eq!(decoded.into_raw(), test_image(5, 3));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn negative_and_large_steps() {
        let dir = temp_dir("steps");
        let mut w = EventWriter::create(&dir).unwrap();
        for step in [-1, i64::MIN, i64::MAX, 300] {
            w.add_scalar("x", f32::NAN, step).unwrap();
        }
        w.flush().unwrap();
        let events = read_events(w.path()).unwrap();
        let steps: Vec<i64> = events[1..].iter().map(|e| e.step).collect();
        assert_eq!(steps, [-1, i64::MIN, i64::MAX, 300]);
        assert!(events[1].scalar("x").unwrap().is_nan());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_bad_image_sizes() {
        let dir = temp_dir("badimg");
        let mut w = EventWriter::create(&dir).unwrap();
        assert!(matches!(w.add_image("x", &[0; 10], 2, 2, 0), Err(TbError::InvalidImage(_))));
        assert!(matches!(w.add_image("x", &[], 0, 0, 0), Err(TbError::InvalidImage(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupted_byte_is_a_crc_error() {
        let dir = temp_dir("corrupt");
        let bytes = std::fs::read(write_sample(&dir)).unwrap();
        let first_len = 12 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 4;

        // Flip every byte of the second record in turn: each must be caught.
        for i in first_len..first_len + 30 {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = EventReader::new(&bad[..]).collect::<Result<Vec<_>, _>>().unwrap_err();
            match err {
                TbError::LengthCrc { offset } | TbError::DataCrc { offset } => {
                    assert_eq!(offset, first_len as u64, "byte {i}");
                }
                other => panic!("byte {i}: expected a CRC error, got {other}"),
            }
        }
        // The events before the damage are still delivered.
        let mut bad = bytes.clone();
        bad[first_len + 20] ^= 1;
        let mut reader = EventReader::new(&bad[..]);
        assert!(reader.next().unwrap().is_ok());
        assert!(matches!(reader.next(), Some(Err(TbError::DataCrc { .. }))));
        assert!(reader.next().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn truncation_is_reported() {
        let dir = temp_dir("trunc");
        let bytes = std::fs::read(write_sample(&dir)).unwrap();
        let all = EventReader::new(&bytes[..]).count();
        for cut in 1..bytes.len() {
            let results: Vec<_> = EventReader::new(&bytes[..cut]).collect();
            let complete = results.iter().filter(|r| r.is_ok()).count();
            assert!(complete < all);
            match results.last() {
                Some(Err(TbError::Truncated { .. })) => {}
                // A cut exactly at a record boundary is a shorter valid file.
                Some(Ok(_)) => assert!(results.iter().all(Result::is_ok)),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(matches!(
            read_events(&{
                let p = dir.join("cut.tfevents");
                std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
                p
            }),
            Err(TbError::Truncated { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_protobuf_is_an_error_not_a_panic() {
        // Valid framing around junk payloads.
        for junk in [
            &[0xff; 11][..],
            &[0x0a, 0x05, 1],          // field 1 with the wrong wire type
            &[0x2a, 0x7f, 0x0a],       // summary length past the end
            &[0x2a, 0x02, 0x0a, 0x10], // value length past the end
            &[0x00],                   // field number 0
            &[0x0b],                   // group wire type
        ] {
            let mut file = Vec::new();
            write_record(&mut file, junk).unwrap();
            write_record(&mut file, &[0x10, 0x07]).unwrap(); // step = 7
            let results: Vec<_> = EventReader::new(&file[..]).collect();
            assert!(matches!(results[0], Err(TbError::Proto { offset: 0, .. })), "{junk:?}: {results:?}");
            // Framing is intact, so the next record is still read.
            assert_eq!(results[1].as_ref().unwrap().step, 7);
        }
    }

    #[test]
    fn decodes_tensor_scalars() {
        // Value { tag: "t", tensor: { dtype: DT_FLOAT, tensor_shape: {}, float_val: [0.5] } }
        let mut tensor = ProtoWriter::default();
        tensor.varint_field(1, DT_FLOAT);
        tensor.bytes(2, &[]);
        tensor.bytes(5, &0.5f32.to_le_bytes());
        let mut value = ProtoWriter::default();
        value.bytes(1, b"t");
        value.bytes(8, &tensor.buf);
        let parsed = parse_value(&value.buf).unwrap();
        assert_eq!(parsed.data, ValueData::Scalar(0.5));

        // A rank-1 tensor is not a scalar.
        let mut shape = ProtoWriter::default();
        shape.bytes(2, &[0x08, 0x01]); // dim { size: 1 }
        tensor.bytes(2, &shape.buf);
        let mut value = ProtoWriter::default();
        value.bytes(8, &tensor.buf);
        assert_eq!(parse_value(&value.buf).unwrap().data, ValueData::Other);
    }

    /// An event file written by TensorBoard's own Python writer, so the reader
    /// is checked against an independent implementation of the format.
    ///
    /// Produced with tensorboard 2.21.0, pillow and no TensorFlow, run in the
    /// fixture directory:
    ///
    /// ```python
    /// import glob, io, shutil, tempfile
    /// from PIL import Image
    /// from tensorboard.compat.proto.event_pb2 import Event
    /// from tensorboard.compat.proto.summary_pb2 import Summary
    /// from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    /// from tensorboard.summary.writer.event_file_writer import EventFileWriter
    ///
    /// logdir = tempfile.mkdtemp()
    /// w = EventFileWriter(logdir)  # writes the file_version event itself
    /// w.add_event(Event(wall_time=1700000000.25, step=1, summary=Summary(value=[
    ///     Summary.Value(tag="loss/D", simple_value=0.5),
    ///     Summary.Value(tag="loss/G", simple_value=-1.25)])))
    /// w.add_event(Event(wall_time=1700000001.5, step=2**40, summary=Summary(value=[
    ///     Summary.Value(tag="loss/D", simple_value=0.0)])))
    /// # TF2-style scalar: a rank-0 DT_FLOAT tensor with plugin metadata.
    /// w.add_event(Event(wall_time=1700000002.0, step=3, summary=scalar_pb("acc", 0.75)))
    /// png = io.BytesIO()
    /// Image.frombytes("RGB", (3, 2), bytes(range(18))).save(png, format="PNG")
    /// w.add_event(Event(wall_time=1700000003.0, step=3, summary=Summary(value=[
    ///     Summary.Value(tag="samples", image=Summary.Image(
    ///         height=2, width=3, colorspace=3, encoded_image_string=png.getvalue()))])))
    /// w.close()
    /// shutil.copy(glob.glob(logdir + "/events.out.tfevents.*")[0], "python_written.tfevents")
    /// ```
    #[test]
    fn reads_file_written_by_tensorboard_python() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tensorboard"));
        let events = read_events(&dir.join("python_written.tfevents")).unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));

        assert_eq!((events[1].step, events[1].wall_time), (1, 1_700_000_000.25));
        assert_eq!(events[1].scalars().collect::<Vec<_>>(), [("loss/D", 0.5), ("loss/G", -1.25)]);

        // A 0.0 simple_value is still present as a scalar.
        assert_eq!((events[2].step, events[2].wall_time), (1 << 40, 1_700_000_001.5));
        assert_eq!(events[2].scalars().collect::<Vec<_>>(), [("loss/D", 0.0)]);

        // scalar_pb writes a rank-0 float tensor, not a simple_value.
        assert_eq!(events[3].step, 3);
        assert_eq!(events[3].scalar("acc"), Some(0.75));

        assert_eq!((events[4].step, events[4].wall_time), (3, 1_700_000_003.0));
        let (tag, img) = events[4].images().next().unwrap();
        assert_eq!((tag, img.width, img.height, img.colorspace), ("samples", 3, 2, 3));
        let decoded = image::load_from_memory(&img.encoded).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (3, 2));
        assert_eq!(decoded.into_raw(), (0..18).collect::<Vec<u8>>());
    }
}
