//! The event-file reader: decodes what [`super::EventWriter`] writes (and TensorFlow 2's rank-0
//! float tensors), checking both CRCs of every record. Only the tests need it (they check our
//! files as TensorBoard would read them), so it is compiled for them and behind the
//! `tensorboard-reader` feature, not into the binary.

use super::{masked_crc, TbError, WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

fn u32_le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4-byte slice"))
}

/// `DataType.DT_FLOAT` in `types.proto`.
pub(super) const DT_FLOAT: u64 = 1;

/// One decoded `Event`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub step: i64,
    /// Set only on the first event of a file (`"brain.Event:2"`).
    pub file_version: Option<String>,
    /// The `Summary.Value`s of this event; empty for non-summary events.
    pub values: Vec<SummaryValue>,
}

impl Event {
    /// The scalar values of this event as `(tag, value)` pairs.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, f32)> {
        self.values.iter().filter_map(|v| match v.data {
            ValueData::Scalar(x) => Some((v.tag.as_str(), x)),
            _ => None,
        })
    }

    /// The scalar logged under `tag` in this event, if any.
    pub fn scalar(&self, tag: &str) -> Option<f32> {
        self.scalars().find(|&(t, _)| t == tag).map(|(_, x)| x)
    }

    /// The images of this event as `(tag, image)` pairs.
    pub fn images(&self) -> impl Iterator<Item = (&str, &ImageSummary)> {
        self.values.iter().filter_map(|v| match &v.data {
            ValueData::Image(img) => Some((v.tag.as_str(), img)),
            _ => None,
        })
    }
}

/// One tagged `Summary.Value`.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValue {
    pub tag: String,
    pub data: ValueData,
}

/// The payload of a [`SummaryValue`].
#[derive(Debug, Clone, PartialEq)]
pub enum ValueData {
    /// `simple_value`, or a rank-0 float32 `tensor`.
    Scalar(f32),
    Image(ImageSummary),
    /// A kind this reader does not decode (histogram, audio, other tensors).
    Other,
}

/// A `Summary.Image`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSummary {
    pub width: u32,
    pub height: u32,
    /// 1 grayscale, 2 grayscale+alpha, 3 RGB, 4 RGBA, ...
    pub colorspace: u32,
    /// The encoded image file (PNG for images written by [`EventWriter`]).
    pub encoded: Vec<u8>,
}

/// Reads all events of an event file, failing on the first corrupted or
/// truncated record.
///
/// Use [`EventReader`] to keep the events before a truncated tail, e.g. when
/// reading a file that is still being written.
pub fn read_events(path: &Path) -> Result<Vec<Event>, TbError> {
    EventReader::open(path)?.collect()
}

/// Iterator over the events of a TFRecord event stream.
///
/// After an I/O, CRC or truncation error the iterator ends, since the record
/// boundaries can no longer be trusted. A record whose CRCs are valid but whose
/// protobuf is malformed yields an error and reading continues.
#[derive(Debug)]
pub struct EventReader<R> {
    inner: R,
    offset: u64,
    done: bool,
}

impl EventReader<BufReader<File>> {
    /// Opens an event file for reading.
    pub fn open(path: &Path) -> Result<Self, TbError> {
        Ok(Self::new(BufReader::new(File::open(path)?)))
    }
}

impl<R: Read> EventReader<R> {
    /// Reads events from any byte stream, e.g. an in-memory buffer.
    pub fn new(inner: R) -> Self {
        Self { inner, offset: 0, done: false }
    }

    /// Reads and checks one record; `None` at a clean end of stream.
    fn read_record(&mut self) -> Result<Option<Vec<u8>>, TbError> {
        let offset = self.offset;
        let truncated = TbError::Truncated { offset };

        let mut header = [0u8; 12];
        match read_full(&mut self.inner, &mut header)? {
            0 => return Ok(None),
            12 => {}
            _ => return Err(truncated),
        }
        let (len_bytes, len_crc) = header.split_at(8);
        if masked_crc(len_bytes) != u32_le(len_crc) {
            return Err(TbError::LengthCrc { offset });
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8-byte slice"));

        // Grow the buffer as data arrives instead of trusting `len` for one
        // big allocation: the length CRC is only 32 bits.
        let mut data = Vec::with_capacity(len.min(1 << 20) as usize);
        (&mut self.inner).take(len).read_to_end(&mut data)?;
        let mut data_crc = [0u8; 4];
        if (data.len() as u64) < len || read_full(&mut self.inner, &mut data_crc)? < 4 {
            return Err(truncated);
        }
        if masked_crc(&data) != u32::from_le_bytes(data_crc) {
            return Err(TbError::DataCrc { offset });
        }
        self.offset += 12 + len + 4;
        Ok(Some(data))
    }
}

impl<R: Read> Iterator for EventReader<R> {
    type Item = Result<Event, TbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let offset = self.offset;
        match self.read_record() {
            Ok(Some(data)) => {
                Some(parse_event(&data).map_err(|ProtoError(reason)| TbError::Proto { offset, reason }))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Like `read_exact`, but reports how many bytes were read before EOF so a
/// clean end of stream (0) can be told apart from a truncated record.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Decoding failure inside one record; the reader adds the record offset.
#[derive(Debug)]
pub(super) struct ProtoError(&'static str);

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the `(field number, value)` pairs of one message.
struct ProtoReader<'a> {
    buf: &'a [u8],
}

impl<'a> ProtoReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError("field runs past the end of its message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError("varint longer than 10 bytes"))
    }

    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(ProtoError("field number 0"));
        }
        let value = match key & 7 {
            WIRE_VARINT => Field::Varint(self.varint()?),
            WIRE_FIXED64 => Field::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            WIRE_LEN => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| ProtoError("length does not fit in memory"))?;
                Field::Len(self.take(len)?)
            }
            WIRE_FIXED32 => Field::Fixed32(u32_le(self.take(4)?)),
            // Groups (3, 4) are deprecated and never used by these messages.
            _ => return Err(ProtoError("unsupported wire type")),
        };
        Ok(Some((field, value)))
    }
}

const WRONG_WIRE_TYPE: ProtoError = ProtoError("known field with an unexpected wire type");

fn parse_event(data: &[u8]) -> Result<Event, ProtoError> {
    let mut event = Event::default();
    let mut r = ProtoReader::new(data);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (1, Field::Fixed64(bits)) => event.wall_time = f64::from_bits(bits),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Len(s)) => {
                event.file_version = Some(String::from_utf8_lossy(s).into_owned());
            }
            // Repeated occurrences of an embedded message are merged, which
            // for Summary means concatenating the values.
            (5, Field::Len(summary)) => event.values.extend(parse_summary(summary)?),
            (1 | 2 | 3 | 5, _) => return Err(WRONG_WIRE_TYPE),
            // graph_def, session_log, source_metadata, ...: not needed.
            _ => {}
        }
    }
    Ok(event)
}

fn parse_summary(data: &[u8]) -> Result<Vec<SummaryValue>, ProtoError> {
    let mut values = Vec::new();
    let mut r = ProtoReader::new(data);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (1, Field::Len(v)) => values.push(parse_value(v)?),
            (1, _) => return Err(WRONG_WIRE_TYPE),
            _ => {}
        }
    }
    Ok(values)
}

pub(super) fn parse_value(data: &[u8]) -> Result<SummaryValue, ProtoError> {
    let mut tag = String::new();
    // Members of the `value` oneof: the last one present wins.
    let mut payload = ValueData::Other;
    let mut r = ProtoReader::new(data);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (1, Field::Len(s)) => tag = String::from_utf8_lossy(s).into_owned(),
            (2, Field::Fixed32(bits)) => payload = ValueData::Scalar(f32::from_bits(bits)),
            (4, Field::Len(img)) => payload = ValueData::Image(parse_image(img)?),
            (8, Field::Len(tensor)) => {
                payload = parse_scalar_tensor(tensor)?.map_or(ValueData::Other, ValueData::Scalar);
            }
            (1 | 2 | 4 | 8, _) => return Err(WRONG_WIRE_TYPE),
            // Old-style histogram, histo, audio.
            (3 | 5 | 6, _) => payload = ValueData::Other,
            // node_name, metadata: not needed.
            _ => {}
        }
    }
    Ok(SummaryValue { tag, data: payload })
}

fn parse_image(data: &[u8]) -> Result<ImageSummary, ProtoError> {
    // int32 fields; negative values (sign-extended to 64 bits) are rejected.
    let dim = |v: u64| u32::try_from(v).map_err(|_| ProtoError("image field out of range"));
    let mut img = ImageSummary::default();
    let mut r = ProtoReader::new(data);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (1, Field::Varint(v)) => img.height = dim(v)?,
            (2, Field::Varint(v)) => img.width = dim(v)?,
            (3, Field::Varint(v)) => img.colorspace = dim(v)?,
            (4, Field::Len(b)) => img.encoded = b.to_vec(),
            (1..=4, _) => return Err(WRONG_WIRE_TYPE),
            _ => {}
        }
    }
    Ok(img)
}

/// The value of a rank-0 `DT_FLOAT` `TensorProto`, the TF2 form of a scalar
/// summary; `None` for any other tensor.
fn parse_scalar_tensor(data: &[u8]) -> Result<Option<f32>, ProtoError> {
    let mut dtype = 0;
    let mut rank = 0;
    let mut floats = Vec::new();
    let mut r = ProtoReader::new(data);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (1, Field::Varint(v)) => dtype = v,
            (2, Field::Len(shape)) => {
                // TensorShapeProto: each `dim` (field 2) adds one dimension.
                let mut s = ProtoReader::new(shape);
                while let Some((f, _)) = s.next_field()? {
                    rank += usize::from(f == 2);
                }
            }
            // tensor_content is the raw little-endian buffer; float_val is
            // packed (or, from old writers, repeated fixed32).
            (4 | 5, Field::Len(raw)) => floats.extend(
                raw.chunks(4)
                    .map(|c| c.try_into().map(f32::from_le_bytes))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ProtoError("float data not a multiple of 4 bytes"))?,
            ),
            (5, Field::Fixed32(bits)) => floats.push(f32::from_bits(bits)),
            _ => {}
        }
    }
    Ok(match floats[..] {
        [x] if dtype == DT_FLOAT && rank == 0 => Some(x),
        _ => None,
    })
}
