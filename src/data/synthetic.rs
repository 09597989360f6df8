//! Procedural multi-domain face dataset with exact ground truth.
//!
//! CelebA and RaFD cannot be shipped with the crate, so this module draws small cartoon
//! faces that carry the same kinds of domain labels as the paper's two datasets. It lets a
//! new user watch StarGAN learn within minutes, and it gives something no photograph can:
//! the *exact* image a perfect translation would produce.
//!
//! # Content and labels
//!
//! Every picture is a pure function of two independent parts:
//!
//! * [`Content`]: everything that identifies "the person" and the scene and must survive a
//!   translation: face shape, size and position, skin tone, eye spacing and iris colour,
//!   hair style, clothing, background colour and texture, and a seed for pixel noise.
//!   [`Content::sample`] draws it from `(seed, index)` with a fixed in-module PRNG, so the
//!   data never changes with crate versions.
//! * [`Labels`]: the full domain state: hair colour, `male`, `young` and the facial
//!   [`Expression`].
//!
//! Ground truth: translating `render(content, labels)` to the domain `target` should give
//! exactly `render(content, target)`; everything outside the changed attribute's region is
//! bit-identical.
//!
//! # The two label sets
//!
//! Like the paper, there are two datasets with different label sets ([`LabelSet`]):
//!
//! * CelebA-like ([`CelebaLabels`], attribute order [`CELEBA_ATTRIBUTES`]:
//!   `Black_Hair, Blond_Hair, Brown_Hair, Male, Young`). Hair colour, `male` and `young` are
//!   drawn at random; the expression is always [`Expression::Neutral`] (it is unlabelled in
//!   CelebA, but fixing it keeps the picture fully determined by content and labels).
//! * RaFD-like ([`RafdLabels`], expression order [`RAFD_EXPRESSIONS`], the alphabetical
//!   folder order). The expression is drawn at random; the attributes are fixed to
//!   [`RAFD_DEFAULT_ATTRIBUTES`] (brown hair, not male, young).
//!
//! The two splits also use different content streams (as RaFD's people are not CelebA's).
//!
//! # Local attributes
//!
//! Every label changes only a local region, which [`region_mask`] exposes:
//!
//! * hair colour: the hair itself (back hair and fringe);
//! * `male`: a stubbled beard shading on the lower face;
//! * `young == false`: wrinkle lines (forehead, crow's feet, nasolabial folds) and greyed,
//!   streaked hair, so its region is the wrinkle zones plus the hair;
//! * expression: eyes, brows, the nose bridge and the mouth.
//!
//! Exactness is by construction: every drawing step that reads a label is clipped to that
//! label's region (a binary mask), and every other step, including the final per-pixel noise,
//! is the same per-pixel operation whatever the labels, so it maps equal pixels to equal
//! pixels. A pixel outside the region therefore cannot change; the tests check it anyway.
//! Regions are conservative: they include a 2 px margin around what may be drawn, and the
//! hair region leaves out only pixels that the opaque face, neck and shoulders fully cover.
//!
//! # Rendering
//!
//! [`render`] is the one-off entry point; a [`Renderer`] (one per thread) reuses its canvas
//! and masks and can write CHW floats straight into a batch buffer. Everything is drawn with
//! `tiny-skia` (antialiased) at any size in [`MIN_SIZE`]..=[`MAX_SIZE`]; geometry scales
//! with the size, so a content looks the same at 32 and at 128 px. Contents and labels are
//! pinned by the in-module PRNG; the exact pixel bytes also depend on tiny-skia's rasteriser
//! (pinned by the crate's `0.11` requirement).

use crate::rng::{mix as mix64, SplitMix64};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tiny_skia::{
    Color, FillRule, GradientStop, LineCap, LinearGradient, Mask, Paint, Path, PathBuilder, Pixmap, Point,
    Rect, Shader, SpreadMode, Stroke, Transform,
};

/// Smallest supported image side in pixels.
pub const MIN_SIZE: u32 = 16;
/// Largest supported image side in pixels.
pub const MAX_SIZE: u32 = 256;

/// CelebA-like attribute names: the reference's five, in its order (the order of
/// [`CelebaLabels::to_vector`]); RaFD-like expression names in the reference (alphabetical folder)
/// order. The built-in data uses the real data sets' names so that models trained on it read them.
pub use crate::labels::{DEFAULT_CELEBA_ATTRS as CELEBA_ATTRIBUTES, RAFD_EXPRESSIONS};

/// The attributes every RaFD-like sample has (its attributes are not labelled there).
pub const RAFD_DEFAULT_ATTRIBUTES: CelebaLabels =
    CelebaLabels { hair: Hair::Brown, male: false, young: true };

/// Pixels by which label regions extend beyond the shapes they are built from.
const REGION_MARGIN: usize = 2;

/// Amplitude (in 8-bit levels) of the per-pixel content noise.
const NOISE_AMPLITUDE: i32 = 3;

/// Errors from this module.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SyntheticError {
    /// The requested image side is outside [`MIN_SIZE`]..=[`MAX_SIZE`].
    #[error("image size {size} is outside the supported range {MIN_SIZE}..={MAX_SIZE}")]
    InvalidSize { size: u32 },
    /// A label vector or output buffer has the wrong length.
    #[error("{what} has length {got}, expected {expected}")]
    Length { what: &'static str, expected: usize, got: usize },
    /// A class index is out of range.
    #[error("{what} index {index} is out of range (0..{count})")]
    Index { what: &'static str, index: usize, count: usize },
}

fn check_size(size: u32) -> Result<(), SyntheticError> {
    if (MIN_SIZE..=MAX_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(SyntheticError::InvalidSize { size })
    }
}

// ---------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------

/// The sampler of contents and labels: [`SplitMix64`] with the draws this module needs.
#[derive(Debug, Clone)]
struct Sampler(SplitMix64);

impl Sampler {
    /// A generator for stream `stream` of sample `index` under `seed`. Streams keep content,
    /// labels and texture details independent of each other.
    fn for_sample(seed: u64, stream: u64, index: u64) -> Self {
        let a = mix64(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        Self(SplitMix64(mix64(a ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)` with 24 bits, exactly representable in f32.
    fn unit(&mut self) -> f32 {
        self.0.uniform_f32()
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (the modulo bias is far below anything that matters here, and the data
    /// set's pixels are pinned by it).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
}

const STREAM_CONTENT: u64 = 1;
const STREAM_LABELS: u64 = 2;
const STREAM_BACKGROUND: u64 = 3;
const STREAM_STUBBLE: u64 = 4;
const STREAM_HAIR: u64 = 5;

// ---------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------

/// Hair colour, the one-hot part of the CelebA-like labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Hair {
    /// `Black_Hair`.
    Black,
    /// `Blond_Hair`.
    Blond,
    /// `Brown_Hair`.
    Brown,
}

impl Hair {
    /// All hair colours in the reference order.
    pub const ALL: [Hair; 3] = [Hair::Black, Hair::Blond, Hair::Brown];

    /// Position in [`Hair::ALL`] (and in the CelebA-like label vector).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The hair colour at `index` in [`Hair::ALL`].
    pub fn from_index(index: usize) -> Result<Self, SyntheticError> {
        Self::ALL.get(index).copied().ok_or(SyntheticError::Index {
            what: "hair colour",
            index,
            count: Self::ALL.len(),
        })
    }

    fn rgb(self) -> [u8; 3] {
        match self {
            Hair::Black => [30, 25, 25],
            Hair::Blond => [230, 196, 112],
            Hair::Brown => [112, 68, 36],
        }
    }
}

/// Facial expression, the RaFD-like label, in the reference (alphabetical) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expression {
    Angry,
    Contemptuous,
    Disgusted,
    Fearful,
    Happy,
    Neutral,
    Sad,
    Surprised,
}

impl Expression {
    /// All expressions in the reference order ([`RAFD_EXPRESSIONS`]).
    pub const ALL: [Expression; 8] = [
        Expression::Angry,
        Expression::Contemptuous,
        Expression::Disgusted,
        Expression::Fearful,
        Expression::Happy,
        Expression::Neutral,
        Expression::Sad,
        Expression::Surprised,
    ];

    /// Position in [`Expression::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The expression at `index` in [`Expression::ALL`].
    pub fn from_index(index: usize) -> Result<Self, SyntheticError> {
        Self::ALL.get(index).copied().ok_or(SyntheticError::Index {
            what: "expression",
            index,
            count: Self::ALL.len(),
        })
    }

    /// The RaFD folder name (`"angry"`, ...).
    pub fn name(self) -> &'static str {
        RAFD_EXPRESSIONS[self.index()]
    }
}

/// The full latent domain state of a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Labels {
    /// Hair colour (the hair region).
    pub hair: Hair,
    /// A stubbled beard on the lower face.
    pub male: bool,
    /// `false`: wrinkles and greying hair.
    pub young: bool,
    /// Eyes, brows, nose bridge and mouth.
    pub expression: Expression,
}

impl Labels {
    /// A CelebA-like state: the given attributes with a neutral expression.
    pub fn from_celeba(c: CelebaLabels) -> Self {
        Self { hair: c.hair, male: c.male, young: c.young, expression: Expression::Neutral }
    }

    /// A RaFD-like state: the given expression with [`RAFD_DEFAULT_ATTRIBUTES`].
    pub fn from_rafd(r: RafdLabels) -> Self {
        Self { expression: r.expression, ..Self::from_celeba(RAFD_DEFAULT_ATTRIBUTES) }
    }

    /// The CelebA-like attributes of this state.
    pub fn celeba(&self) -> CelebaLabels {
        CelebaLabels { hair: self.hair, male: self.male, young: self.young }
    }

    /// The RaFD-like expression of this state.
    pub fn rafd(&self) -> RafdLabels {
        RafdLabels { expression: self.expression }
    }

    /// This state with the CelebA-like attributes replaced (expression kept).
    pub fn with_celeba(self, c: CelebaLabels) -> Self {
        Self { hair: c.hair, male: c.male, young: c.young, ..self }
    }

    /// This state with the expression replaced (attributes kept).
    pub fn with_rafd(self, r: RafdLabels) -> Self {
        Self { expression: r.expression, ..self }
    }
}

/// CelebA-like labels: hair colour one-hot, `Male`, `Young`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CelebaLabels {
    /// `Black_Hair`, `Blond_Hair` or `Brown_Hair`.
    pub hair: Hair,
    /// `Male`.
    pub male: bool,
    /// `Young`.
    pub young: bool,
}

impl CelebaLabels {
    /// Length of [`CelebaLabels::to_vector`].
    pub const DIM: usize = CELEBA_ATTRIBUTES.len();

    /// Binary attribute vector in [`CELEBA_ATTRIBUTES`] order.
    pub fn to_vector(&self) -> [f32; 5] {
        let mut v = [0.0; 5];
        v[self.hair.index()] = 1.0;
        v[3] = f32::from(u8::from(self.male));
        v[4] = f32::from(u8::from(self.young));
        v
    }

    /// Inverse of [`CelebaLabels::to_vector`] that also accepts soft outputs: hair is the
    /// arg-max of the first three entries, `Male` and `Young` are thresholded at 0.5.
    pub fn from_vector(v: &[f32]) -> Result<Self, SyntheticError> {
        if v.len() != Self::DIM {
            return Err(SyntheticError::Length {
                what: "CelebA label vector",
                expected: Self::DIM,
                got: v.len(),
            });
        }
        let hair = (1..3).fold(0, |best, i| if v[i] > v[best] { i } else { best });
        Ok(Self { hair: Hair::ALL[hair], male: v[3] > 0.5, young: v[4] > 0.5 })
    }

    /// All 12 attribute combinations, hair-major.
    pub fn all() -> Vec<CelebaLabels> {
        Hair::ALL
            .iter()
            .flat_map(|&hair| {
                [(false, false), (false, true), (true, false), (true, true)]
                    .into_iter()
                    .map(move |(male, young)| CelebaLabels { hair, male, young })
            })
            .collect()
    }
}

/// RaFD-like labels: one of eight expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RafdLabels {
    /// The expression.
    pub expression: Expression,
}

impl RafdLabels {
    /// Length of [`RafdLabels::to_vector`].
    pub const DIM: usize = RAFD_EXPRESSIONS.len();

    /// One-hot vector in [`RAFD_EXPRESSIONS`] order.
    pub fn to_vector(&self) -> [f32; 8] {
        let mut v = [0.0; 8];
        v[self.expression.index()] = 1.0;
        v
    }

    /// Arg-max of a (possibly soft) expression vector.
    pub fn from_vector(v: &[f32]) -> Result<Self, SyntheticError> {
        if v.len() != Self::DIM {
            return Err(SyntheticError::Length {
                what: "RaFD label vector",
                expected: Self::DIM,
                got: v.len(),
            });
        }
        let best = (1..Self::DIM).fold(0, |best, i| if v[i] > v[best] { i } else { best });
        Ok(Self { expression: Expression::ALL[best] })
    }
}

/// Which label a [`region_mask`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Attribute {
    /// Hair colour (Black/Blond/Brown).
    Hair,
    /// `Male`.
    Male,
    /// `Young` (wrinkles and greying hair).
    Young,
    /// The facial expression.
    Expression,
}

impl Attribute {
    /// All attributes.
    pub const ALL: [Attribute; 4] =
        [Attribute::Hair, Attribute::Male, Attribute::Young, Attribute::Expression];
}

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

/// Background texture drawn over the plain background colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Texture {
    /// A linear gradient from the background to the accent colour.
    Gradient,
    /// Straight stripes in the accent colour.
    Stripes,
    /// Soft round blobs in the accent colour.
    Blobs,
}

/// Everything about a picture that is not a domain label. Geometry is in fractions of the
/// image side, so the same content renders consistently at every size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// Face centre `[x, y]`, fractions of the image side.
    pub center: [f32; 2],
    /// Vertical semi-axis of the face ellipse, fraction of the image side.
    pub face_height: f32,
    /// Horizontal over vertical semi-axis of the face ellipse.
    pub aspect: f32,
    /// Horizontal offset of each eye from the midline, fraction of the horizontal semi-axis.
    pub eye_spacing: f32,
    /// Skin colour.
    pub skin: [u8; 3],
    /// Iris colour.
    pub iris: [u8; 3],
    /// Clothing colour.
    pub clothing: [u8; 3],
    /// Background colour.
    pub background: [u8; 3],
    /// Second background colour used by the texture.
    pub accent: [u8; 3],
    /// Background texture kind.
    pub texture: Texture,
    /// Texture orientation in degrees (gradient direction, stripe angle).
    pub texture_angle: f32,
    /// Texture scale: stripe period or blob size, fraction of the image side.
    pub texture_scale: f32,
    /// Hair reaching the shoulders (otherwise a short cut).
    pub long_hair: bool,
    /// Horizontal position of the fringe's parting, in `[-1, 1]` of the face half-width.
    pub hair_part: f32,
    /// Seed of the per-pixel noise, blob and stubble placement and hair strands.
    pub noise_seed: u64,
}

impl Content {
    /// The content of sample `index` of the stream `seed`. Independent of any labels.
    pub fn sample(seed: u64, index: u64) -> Self {
        let mut rng = Sampler::for_sample(seed, STREAM_CONTENT, index);
        let center = [0.5 + rng.range(-0.03, 0.03), 0.54 + rng.range(-0.025, 0.025)];
        let face_height = rng.range(0.27, 0.31);
        let aspect = rng.range(0.74, 0.88);
        let eye_spacing = rng.range(0.34, 0.44);
        let skin = skin_tone(rng.unit());
        const IRISES: [[u8; 3]; 5] =
            [[92, 56, 28], [58, 104, 158], [66, 116, 72], [42, 30, 24], [120, 92, 48]];
        let iris = IRISES[rng.below(IRISES.len() as u64) as usize];
        let clothing = hsv(rng.unit(), rng.range(0.3, 0.8), rng.range(0.25, 0.8));
        let (hue, sat, val) = (rng.unit(), rng.range(0.15, 0.6), rng.range(0.45, 0.95));
        let background = hsv(hue, sat, val);
        // The accent differs in brightness (and a little in hue) so the texture is visible.
        let dv = rng.range(0.15, 0.3) * if val > 0.7 { -1.0 } else { 1.0 };
        let accent = hsv(hue + rng.range(-0.08, 0.08), sat, val + dv);
        let texture = [Texture::Gradient, Texture::Stripes, Texture::Blobs][rng.below(3) as usize];
        let texture_angle = rng.range(0.0, 180.0);
        let texture_scale = rng.range(0.08, 0.2);
        let long_hair = rng.chance(0.5);
        let hair_part = rng.range(-0.5, 0.5);
        let noise_seed = rng.next_u64();
        Self {
            center,
            face_height,
            aspect,
            eye_spacing,
            skin,
            iris,
            clothing,
            background,
            accent,
            texture,
            texture_angle,
            texture_scale,
            long_hair,
            hair_part,
            noise_seed,
        }
    }
}

/// Skin tone along a light-to-dark palette, `t` in `[0, 1)`.
fn skin_tone(t: f32) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 5] =
        [[250, 222, 196], [238, 192, 158], [218, 164, 122], [184, 126, 88], [140, 94, 64]];
    let x = t.clamp(0.0, 1.0) * (PALETTE.len() - 1) as f32;
    let i = (x as usize).min(PALETTE.len() - 2);
    mix(PALETTE[i], PALETTE[i + 1], x - i as f32)
}

/// HSV (all components in `[0, 1]`, hue wrapping) to RGB.
fn hsv(h: f32, s: f32, v: f32) -> [u8; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let (s, v) = (s.clamp(0.0, 1.0), v.clamp(0.0, 1.0));
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    let q = |a: f32| ((a + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [q(r), q(g), q(b)]
}

fn mix(a: [u8; 3], b: [u8; 3], t: f32) -> [u8; 3] {
    let f = |x: u8, y: u8| (f32::from(x) + (f32::from(y) - f32::from(x)) * t).round() as u8;
    [f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2])]
}

fn scale(a: [u8; 3], k: f32) -> [u8; 3] {
    a.map(|x| (f32::from(x) * k).round().clamp(0.0, 255.0) as u8)
}

// ---------------------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------------------

/// The two synthetic datasets, mirroring CelebA and RaFD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LabelSet {
    /// Random hair colour, `male` and `young`; neutral expression.
    Celeba,
    /// Random expression; attributes fixed to [`RAFD_DEFAULT_ATTRIBUTES`].
    Rafd,
}

impl LabelSet {
    /// The content seed of this split under the dataset seed, so the two splits show
    /// different "people" (as the real datasets do).
    pub fn content_seed(self, seed: u64) -> u64 {
        match self {
            LabelSet::Celeba => seed,
            LabelSet::Rafd => mix64(seed ^ 0x5AFD_5AFD_5AFD_5AFD),
        }
    }
}

/// Sample `index` of `split`: its content (from [`LabelSet::content_seed`]) and its
/// labels. Labels are uniform: hair over 3 colours, `male` and `young` fair coins for
/// CelebA; the expression over all 8 for RaFD.
pub fn sample(split: LabelSet, seed: u64, index: u64) -> (Content, Labels) {
    let content = Content::sample(split.content_seed(seed), index);
    let mut rng = Sampler::for_sample(split.content_seed(seed), STREAM_LABELS, index);
    let labels = match split {
        LabelSet::Celeba => Labels::from_celeba(CelebaLabels {
            hair: Hair::ALL[rng.below(3) as usize],
            male: rng.chance(0.5),
            young: rng.chance(0.5),
        }),
        LabelSet::Rafd => {
            Labels::from_rafd(RafdLabels { expression: Expression::ALL[rng.below(8) as usize] })
        }
    };
    (content, labels)
}

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

/// A packed 8-bit RGB image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, RGB per pixel.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A black image.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, data: vec![0; width as usize * height as usize * 3] }
    }

    /// The pixel at `(x, y)`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Planar CHW floats in `[-1, 1]` (`x / 127.5 - 1`), the generator's input range.
    pub fn to_chw_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.data.len()];
        let plane = self.width as usize * self.height as usize;
        for (p, px) in self.data.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out[c * plane + p] = f32::from(v) / 127.5 - 1.0;
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------------------

/// Face layout in pixels. `u` (the face half-width) is the unit for feature sizes.
#[derive(Debug, Clone, Copy)]
struct Layout {
    s: f32,
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    u: f32,
    eye_dx: f32,
    ey: f32,
    my: f32,
}

impl Layout {
    fn new(c: &Content, size: u32) -> Self {
        let s = size as f32;
        let ry = c.face_height * s;
        let rx = ry * c.aspect;
        let cy = c.center[1] * s;
        Self {
            s,
            cx: c.center[0] * s,
            cy,
            rx,
            ry,
            u: rx,
            eye_dx: c.eye_spacing * rx,
            ey: cy - 0.08 * ry,
            my: cy + 0.5 * ry,
        }
    }

    /// Pixel point from face-relative units (`dx` in `u` from the midline, `dy` in `u` from
    /// the mouth line).
    fn mouth(&self, dx: f32, dy: f32) -> (f32, f32) {
        (self.cx + dx * self.u, self.my + dy * self.u)
    }

    /// The shoulders: an ellipse `(cx, cy, rx, ry)` rising from the bottom edge.
    fn shoulders(&self) -> (f32, f32, f32, f32) {
        (self.cx, 1.07 * self.s, 2.1 * self.rx, 0.24 * self.s)
    }

    /// The neck: a rectangle `(left, top, right, bottom)` from under the jaw to the bottom edge.
    fn neck(&self) -> (f32, f32, f32, f32) {
        let w = 0.4 * self.rx;
        (self.cx - w, self.cy + 0.4 * self.ry, self.cx + w, self.s)
    }

    /// A stroke width of `k * u`, never thinner than what still shows at small sizes.
    fn line(&self, k: f32) -> f32 {
        (k * self.u).max(0.8)
    }
}

fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32) -> Option<Path> {
    PathBuilder::from_oval(Rect::from_xywh(cx - rx, cy - ry, 2.0 * rx, 2.0 * ry)?)
}

fn push_ellipse(pb: &mut PathBuilder, cx: f32, cy: f32, rx: f32, ry: f32) {
    if let Some(r) = Rect::from_xywh(cx - rx, cy - ry, 2.0 * rx, 2.0 * ry) {
        pb.push_oval(r);
    }
}

/// A quadratic curve as a path.
fn quad(p0: (f32, f32), c: (f32, f32), p1: (f32, f32)) -> Option<Path> {
    let mut pb = PathBuilder::new();
    pb.move_to(p0.0, p0.1);
    pb.quad_to(c.0, c.1, p1.0, p1.1);
    pb.finish()
}

/// A closed shape bounded by two quadratic curves `p0 -> p1` (control `c0`) and
/// `p1 -> p0` (control `c1`): lips, open mouths.
fn lens(p0: (f32, f32), c0: (f32, f32), p1: (f32, f32), c1: (f32, f32)) -> Option<Path> {
    let mut pb = PathBuilder::new();
    pb.move_to(p0.0, p0.1);
    pb.quad_to(c0.0, c0.1, p1.0, p1.1);
    pb.quad_to(c1.0, c1.1, p0.0, p0.1);
    pb.close();
    pb.finish()
}

fn stroke_style(width: f32) -> Stroke {
    Stroke { width, line_cap: LineCap::Round, ..Stroke::default() }
}

/// The back hair (behind the head), the same for every label.
fn hair_back_path(l: &Layout, c: &Content) -> Option<Path> {
    let mut pb = PathBuilder::new();
    push_ellipse(&mut pb, l.cx, l.cy - 0.12 * l.ry, 1.17 * l.rx, 1.0 * l.ry);
    if c.long_hair {
        // A curtain from the temples down past the jaw, rounded at the bottom.
        let (x0, x1) = (l.cx - 1.2 * l.rx, l.cx + 1.2 * l.rx);
        let (y0, y1) = (l.cy - 0.2 * l.ry, l.cy + 1.0 * l.ry);
        let r = 0.35 * l.rx;
        pb.move_to(x0, y0);
        pb.line_to(x1, y0);
        pb.line_to(x1, y1 - r);
        pb.quad_to(x1, y1, x1 - r, y1);
        pb.line_to(x0 + r, y1);
        pb.quad_to(x0, y1, x0, y1 - r);
        pb.close();
    }
    pb.finish()
}

/// The fringe over the forehead, parted at `hair_part`.
fn fringe_path(l: &Layout, c: &Content) -> Option<Path> {
    let (cx, cy, rx, ry) = (l.cx, l.cy, l.rx, l.ry);
    let px = cx + c.hair_part * 0.6 * rx;
    let mut pb = PathBuilder::new();
    // Upper edge slightly outside the face outline, temple to temple over the crown.
    pb.move_to(cx - 1.05 * rx, cy - 0.1 * ry);
    pb.cubic_to(cx - 1.05 * rx, cy - 0.7 * ry, cx - 0.6 * rx, cy - 1.06 * ry, cx, cy - 1.06 * ry);
    pb.cubic_to(cx + 0.6 * rx, cy - 1.06 * ry, cx + 1.05 * rx, cy - 0.7 * ry, cx + 1.05 * rx, cy - 0.1 * ry);
    // Lower edge: from each temple up to the parting.
    pb.quad_to(cx + 0.72 * rx, cy - 0.62 * ry, px, cy - 0.74 * ry);
    pb.quad_to(cx - 0.72 * rx, cy - 0.62 * ry, cx - 1.05 * rx, cy - 0.1 * ry);
    pb.close();
    pb.finish()
}

/// Strands over the hair (texture, coloured by the hair labels).
fn strand_paths(l: &Layout, c: &Content) -> Option<Path> {
    let mut rng = Sampler::for_sample(c.noise_seed, STREAM_HAIR, 0);
    let mut pb = PathBuilder::new();
    let top = (l.cx + c.hair_part * 0.6 * l.rx, l.cy - 1.06 * l.ry);
    for i in 0..9 {
        // Fan out from the crown to both sides, with a little per-content jitter.
        let side = if i % 2 == 0 { -1.0 } else { 1.0 };
        let t = (i / 2) as f32 / 4.0;
        let end_x = l.cx + side * l.rx * (0.35 + 0.7 * t + rng.range(-0.05, 0.05));
        let end_y = l.cy - l.ry * (0.72 - 0.6 * t) + rng.range(-0.05, 0.05) * l.ry;
        let ctrl = ((top.0 + end_x) * 0.5 + side * 0.25 * l.rx, (top.1 + end_y) * 0.5 - 0.1 * l.ry);
        pb.move_to(top.0, top.1);
        pb.quad_to(ctrl.0, ctrl.1, end_x, end_y);
    }
    if c.long_hair {
        for i in 0..6 {
            let side = if i % 2 == 0 { -1.0 } else { 1.0 };
            let x = l.cx + side * l.rx * (1.05 + 0.05 * (i / 2) as f32);
            pb.move_to(x, l.cy - 0.1 * l.ry);
            pb.quad_to(x + side * 0.06 * l.rx, l.cy + 0.4 * l.ry, x, l.cy + 0.95 * l.ry);
        }
    }
    pb.finish()
}

/// Wrinkle lines of an old face: forehead, crow's feet and nasolabial folds.
fn wrinkle_paths(l: &Layout) -> Option<Path> {
    let (cx, cy, rx, ry, u) = (l.cx, l.cy, l.rx, l.ry, l.u);
    let mut pb = PathBuilder::new();
    for (k, w) in [(0.6, 0.32), (0.52, 0.38)] {
        let y = cy - k * ry;
        pb.move_to(cx - w * rx, y + 0.03 * ry);
        pb.quad_to(cx, y - 0.05 * ry, cx + w * rx, y + 0.03 * ry);
    }
    for side in [-1.0, 1.0] {
        let ex = cx + side * l.eye_dx;
        // Crow's feet fanning out from the outer eye corner.
        let x0 = ex + side * 0.27 * u;
        for dy in [-0.1, 0.0, 0.1] {
            pb.move_to(x0, l.ey + dy * 0.6 * u);
            pb.line_to(x0 + side * 0.13 * u, l.ey + dy * 1.6 * u);
        }
        // Nasolabial fold from beside the nose to outside the mouth corner.
        pb.move_to(cx + side * 0.2 * u, cy + 0.12 * ry);
        pb.quad_to(cx + side * 0.5 * u, cy + 0.3 * ry, cx + side * 0.5 * u, l.my + 0.12 * u);
    }
    pb.finish()
}

/// Beard: lower face from cheek to cheek, with a moustache band under the nose.
fn beard_path(l: &Layout) -> Option<Path> {
    let (cx, cy, rx, ry) = (l.cx, l.cy, l.rx, l.ry);
    let mut pb = PathBuilder::new();
    // Along the (slightly enlarged) face outline from the left cheek under the chin.
    const STEPS: usize = 24;
    let a0 = 0.15f32.asin();
    let a1 = std::f32::consts::PI - a0;
    for i in 0..=STEPS {
        let a = a1 - (a1 - a0) * i as f32 / STEPS as f32;
        let (x, y) = (cx + 1.01 * rx * a.cos(), cy + 1.01 * ry * a.sin());
        if i == 0 {
            pb.move_to(x, y);
        } else {
            pb.line_to(x, y);
        }
    }
    // Back over the top: up the right cheek, over the upper lip, down the left cheek.
    pb.quad_to(cx + 0.6 * rx, cy + 0.3 * ry, cx + 0.3 * rx, cy + 0.3 * ry);
    pb.quad_to(cx, cy + 0.24 * ry, cx - 0.3 * rx, cy + 0.3 * ry);
    pb.quad_to(cx - 0.6 * rx, cy + 0.3 * ry, cx - 1.01 * rx * a0.cos(), cy + 1.01 * ry * a0.sin());
    pb.close();
    pb.finish()
}

/// Silver streaks of greying hair (drawn only when old).
fn streak_paths(l: &Layout, c: &Content) -> Option<Path> {
    let mut rng = Sampler::for_sample(c.noise_seed, STREAM_HAIR, 1);
    let mut pb = PathBuilder::new();
    let end = if c.long_hair { 0.8 } else { -0.3 };
    for _ in 0..7 {
        let x = l.cx + rng.range(-0.9, 0.9) * l.rx;
        let bend = rng.range(-0.25, 0.25) * l.rx;
        pb.move_to(x, l.cy - l.ry * rng.range(0.9, 1.1));
        pb.quad_to(x + bend, l.cy - 0.4 * l.ry, x + 1.5 * bend, l.cy + end * l.ry);
    }
    pb.finish()
}

/// Stubble dots scattered over `bounds` (the beard's box); clipped to the beard when drawn.
fn stubble_path(l: &Layout, c: &Content, bounds: Rect) -> Option<Path> {
    let mut rng = Sampler::for_sample(c.noise_seed, STREAM_STUBBLE, 0);
    let mut pb = PathBuilder::new();
    let r = (0.028 * l.u).max(0.45);
    for _ in 0..60 {
        let x = rng.range(bounds.left(), bounds.right());
        let y = rng.range(bounds.top(), bounds.bottom());
        pb.push_circle(x, y, r);
    }
    pb.finish()
}

/// Everything an expression may touch: both eye-and-brow areas, the nose bridge, the mouth.
fn expression_region_path(l: &Layout) -> Option<Path> {
    let u = l.u;
    let mut pb = PathBuilder::new();
    for side in [-1.0, 1.0] {
        push_ellipse(&mut pb, l.cx + side * l.eye_dx, l.ey - 0.12 * u, 0.42 * u, 0.5 * u);
    }
    if let Some(r) = Rect::from_ltrb(l.cx - 0.15 * u, l.ey - 0.55 * u, l.cx + 0.15 * u, l.ey + 0.28 * u) {
        pb.push_rect(r);
    }
    push_ellipse(&mut pb, l.cx, l.my - 0.02 * u, 0.66 * u, 0.42 * u);
    pb.finish()
}

/// `dst` = every pixel within [`REGION_MARGIN`] pixels (in x and in y) of a pixel that `src`
/// covers at all, as a binary 0/255 region. The margin absorbs antialiased edges and strokes of
/// 1 px or less, which tiny-skia draws as hairlines reaching slightly beyond their geometry.
/// Binary, so clipping to a region never dims the edges of what is drawn inside it.
fn grow_region(dst: &mut Mask, src: &Mask, tmp: &mut [u8]) {
    let n = src.width() as usize;
    let r = REGION_MARGIN;
    // Separable, with whole-row ORs (non-zero stays non-zero) that the compiler vectorises:
    // a horizontal pass into `tmp`, then a vertical one into `dst`.
    for (row, out) in src.data().chunks_exact(n).zip(tmp.chunks_exact_mut(n)) {
        out.copy_from_slice(row);
        for d in 1..=r.min(n - 1) {
            for (o, &v) in out[d..].iter_mut().zip(row) {
                *o |= v;
            }
            for (o, &v) in out.iter_mut().zip(&row[d..]) {
                *o |= v;
            }
        }
    }
    for (y, out) in dst.data_mut().chunks_exact_mut(n).enumerate() {
        out.fill(0);
        for near in tmp.chunks_exact(n).take(y + r + 1).skip(y.saturating_sub(r)) {
            for (o, &v) in out.iter_mut().zip(near) {
                *o |= v;
            }
        }
        for o in out {
            *o = if *o > 0 { 255 } else { 0 };
        }
    }
}

/// Whether the whole pixel `(x, y)` lies inside the ellipse (all four corners do; an
/// ellipse is convex).
fn pixel_in_ellipse(x: usize, y: usize, cx: f32, cy: f32, rx: f32, ry: f32) -> bool {
    let inside = |px: f32, py: f32| ((px - cx) / rx).powi(2) + ((py - cy) / ry).powi(2) <= 1.0;
    let (x, y) = (x as f32, y as f32);
    rx > 0.0
        && ry > 0.0
        && [(x, y), (x + 1.0, y), (x, y + 1.0), (x + 1.0, y + 1.0)].into_iter().all(|(px, py)| inside(px, py))
}

/// Adds the antialiased coverage of `path` to `mask`.
fn fill_mask(mask: &mut Mask, path: Option<&Path>) {
    if let Some(path) = path {
        mask.fill_path(path, FillRule::Winding, true, Transform::identity());
    }
}

/// `a = min(a, b)` per pixel: intersection of a coverage mask with a binary region.
fn intersect(a: &mut Mask, b: &Mask) {
    for (x, &y) in a.data_mut().iter_mut().zip(b.data()) {
        *x = (*x).min(y);
    }
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

/// A solid antialiased paint.
fn ink(rgb: [u8; 3], alpha: f32) -> Paint<'static> {
    let a = (alpha.clamp(0.0, 1.0) * 255.0).round() as u8;
    Paint {
        shader: Shader::SolidColor(Color::from_rgba8(rgb[0], rgb[1], rgb[2], a)),
        anti_alias: true,
        ..Paint::default()
    }
}

fn fill(pm: &mut Pixmap, path: &Option<Path>, ink: &Paint, clip: Option<&Mask>) {
    if let Some(path) = path {
        pm.fill_path(path, ink, FillRule::Winding, Transform::identity(), clip);
    }
}

fn stroke(pm: &mut Pixmap, path: &Option<Path>, ink: &Paint, width: f32, clip: Option<&Mask>) {
    if let Some(path) = path {
        let style = stroke_style(width);
        pm.stroke_path(path, ink, &style, Transform::identity(), clip);
    }
}

/// Per-expression face parameters; lifts are in units of the face half-width, up positive.
struct Pose {
    brow_inner: f32,
    brow_outer: f32,
    /// Extra lift of the brow on the image's right (the smirk side of contempt).
    brow_right: f32,
    brow_arch: f32,
    brow_width: f32,
    eye_open: f32,
    nose_wrinkles: bool,
}

impl Pose {
    fn of(e: Expression) -> Self {
        let neutral = Pose {
            brow_inner: 0.0,
            brow_outer: 0.0,
            brow_right: 0.0,
            brow_arch: 0.05,
            brow_width: 0.09,
            eye_open: 1.0,
            nose_wrinkles: false,
        };
        match e {
            // Brows pulled down toward the centre, heavy; narrowed eyes.
            Expression::Angry => {
                Pose { brow_inner: -0.15, brow_outer: 0.05, brow_width: 0.12, eye_open: 0.6, ..neutral }
            }
            // One brow raised over the smirk side.
            Expression::Contemptuous => Pose { brow_right: 0.12, eye_open: 0.8, ..neutral },
            // Lowered flat brows, squint, wrinkled nose.
            Expression::Disgusted => Pose {
                brow_inner: -0.1,
                brow_outer: -0.07,
                brow_arch: 0.0,
                brow_width: 0.1,
                eye_open: 0.5,
                nose_wrinkles: true,
                ..neutral
            },
            // Brows raised and drawn together, wide eyes.
            Expression::Fearful => {
                Pose { brow_inner: 0.17, brow_outer: 0.04, brow_arch: 0.0, eye_open: 1.45, ..neutral }
            }
            // Smiling, narrowed eyes.
            Expression::Happy => Pose { brow_inner: 0.03, brow_outer: 0.03, eye_open: 0.6, ..neutral },
            Expression::Neutral => neutral,
            // Inner brows up, drooping lids.
            Expression::Sad => {
                Pose { brow_inner: 0.17, brow_outer: -0.08, brow_arch: 0.0, eye_open: 0.7, ..neutral }
            }
            // High arched brows, wide eyes.
            Expression::Surprised => {
                Pose { brow_inner: 0.16, brow_outer: 0.16, brow_arch: 0.12, eye_open: 1.55, ..neutral }
            }
        }
    }
}

/// A reusable renderer for one image size. It keeps its canvas and masks between calls, so
/// rendering on the fly in a training loop allocates almost nothing.
pub struct Renderer {
    size: u32,
    pixmap: Pixmap,
    /// Binary regions, indexed by `Attribute as usize`.
    regions: [Mask; 4],
    /// Antialiased content-only shapes that clip hair strands and stubble.
    hair_shape: Mask,
    fringe_shape: Mask,
    beard_shape: Mask,
    scratch: Mask,
    /// Row buffer for [`grow_region`].
    tmp: Vec<u8>,
    /// Cleared only by tests, to check that no drawing step is cut off by its region.
    clip_to_regions: bool,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").field("size", &self.size).finish_non_exhaustive()
    }
}

impl Renderer {
    /// A renderer for `size x size` images, `size` in [`MIN_SIZE`]..=[`MAX_SIZE`].
    pub fn new(size: u32) -> Result<Self, SyntheticError> {
        check_size(size)?;
        let err = || SyntheticError::InvalidSize { size };
        let mask = || Mask::new(size, size).ok_or_else(err);
        Ok(Self {
            size,
            pixmap: Pixmap::new(size, size).ok_or_else(err)?,
            regions: [mask()?, mask()?, mask()?, mask()?],
            hair_shape: mask()?,
            fringe_shape: mask()?,
            beard_shape: mask()?,
            scratch: mask()?,
            tmp: vec![0; size as usize * size as usize],
            clip_to_regions: true,
        })
    }

    /// The image side in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Renders `content` in the domain `labels`.
    pub fn render(&mut self, content: &Content, labels: &Labels) -> RgbImage {
        let mut img = RgbImage::new(self.size, self.size);
        self.draw(content, labels);
        self.read_rgb(content, &mut img.data);
        img
    }

    /// [`Renderer::render`] into an existing image of this renderer's size.
    pub fn render_into(
        &mut self,
        content: &Content,
        labels: &Labels,
        out: &mut RgbImage,
    ) -> Result<(), SyntheticError> {
        let expected = self.pixel_count() * 3;
        if out.width != self.size || out.height != self.size || out.data.len() != expected {
            return Err(SyntheticError::Length { what: "output image", expected, got: out.data.len() });
        }
        self.draw(content, labels);
        self.read_rgb(content, &mut out.data);
        Ok(())
    }

    /// Renders straight into planar CHW floats in `[-1, 1]` (`3 * size * size` values), the
    /// layout a training batch wants; equal to `render(..).to_chw_f32()`.
    pub fn render_chw_into(
        &mut self,
        content: &Content,
        labels: &Labels,
        out: &mut [f32],
    ) -> Result<(), SyntheticError> {
        let plane = self.pixel_count();
        if out.len() != plane * 3 {
            return Err(SyntheticError::Length { what: "CHW buffer", expected: plane * 3, got: out.len() });
        }
        self.draw(content, labels);
        for (p, px) in self.pixmap.data().chunks_exact(4).enumerate() {
            let noise = pixel_noise(content.noise_seed, p);
            for c in 0..3 {
                out[c * plane + p] = f32::from(add_noise(px[c], noise[c])) / 127.5 - 1.0;
            }
        }
        Ok(())
    }

    /// Pixels (row-major, `size * size`) that `attribute` may change for this content;
    /// every other pixel is identical for all values of that attribute.
    pub fn region_mask(&mut self, content: &Content, attribute: Attribute) -> Vec<bool> {
        let l = Layout::new(content, self.size);
        self.build_regions(content, &l);
        let mask = &self.regions[attribute as usize];
        mask.data().iter().map(|&m| m > 0).collect()
    }

    fn pixel_count(&self) -> usize {
        self.size as usize * self.size as usize
    }

    /// Computes the four label regions and the content-only clip shapes for `c`.
    fn build_regions(&mut self, c: &Content, l: &Layout) {
        let fringe = fringe_path(l, c);
        // Content-only antialiased shapes: they seed the regions and clip strands and stubble.
        let shapes = [
            (&mut self.hair_shape, [hair_back_path(l, c), fringe.clone()]),
            (&mut self.fringe_shape, [fringe, None]),
            (&mut self.beard_shape, [beard_path(l), None]),
        ];
        for (mask, paths) in shapes {
            mask.clear();
            for path in &paths {
                fill_mask(mask, path.as_ref());
            }
        }
        let tmp = &mut self.tmp;
        let [hair, male, young, expression] = &mut self.regions;
        grow_region(male, &self.beard_shape, tmp);

        // Hair, minus the pixels that the opaque face, neck and shoulders cover completely
        // (drawn over the back hair, they hide its colour) unless the fringe lies on top.
        // The occluders are shrunk by a pixel for safety.
        grow_region(hair, &self.hair_shape, tmp);
        grow_region(&mut self.scratch, &self.fringe_shape, tmp);
        let n = self.size as usize;
        let (sx, sy, srx, sry) = l.shoulders();
        let (nl, nt, nr, _) = l.neck();
        let pixels = hair.data_mut().iter_mut().zip(self.scratch.data()).enumerate();
        for (p, (h, &under_fringe)) in pixels {
            if *h == 0 || under_fringe > 0 {
                continue;
            }
            let (x, y) = (p % n, p / n);
            let (xf, yf) = (x as f32, y as f32);
            let occluded = pixel_in_ellipse(x, y, l.cx, l.cy, l.rx - 1.0, l.ry - 1.0)
                || pixel_in_ellipse(x, y, sx, sy, srx - 1.0, sry - 1.0)
                || (xf >= nl + 1.0 && xf + 1.0 <= nr - 1.0 && yf >= nt + 1.0);
            if occluded {
                *h = 0;
            }
        }

        // Old faces: the wrinkle lines plus the greying hair.
        self.scratch.clear();
        if let Some(w) = wrinkle_paths(l).and_then(|w| w.stroke(&stroke_style(wrinkle_width(l)), 1.0)) {
            fill_mask(&mut self.scratch, Some(&w));
        }
        grow_region(young, &self.scratch, tmp);
        for (y, &h) in young.data_mut().iter_mut().zip(hair.data()) {
            *y = (*y).max(h);
        }

        self.scratch.clear();
        fill_mask(&mut self.scratch, expression_region_path(l).as_ref());
        grow_region(expression, &self.scratch, tmp);
    }

    /// Draws the picture into the pixmap (without noise), back to front. Every step that
    /// reads a label is clipped to that label's region; the rest is content only.
    fn draw(&mut self, c: &Content, labels: &Labels) {
        let l = Layout::new(c, self.size);
        self.build_regions(c, &l);
        if !self.clip_to_regions {
            for m in self.regions.iter_mut() {
                m.data_mut().fill(255);
            }
        }
        // Shape-limited clips (strands, stubble) stay inside their label's region too.
        let [hair_region, male_region, young_region, expr_region] = &self.regions;
        intersect(&mut self.hair_shape, hair_region);
        intersect(&mut self.fringe_shape, hair_region);
        intersect(&mut self.beard_shape, male_region);
        let pm = &mut self.pixmap;
        let (hair_clip, young_clip) = (Some(hair_region), Some(young_region));
        let (cx, cy, rx, ry, u) = (l.cx, l.cy, l.rx, l.ry, l.u);

        draw_background(pm, c, &l);

        // Back hair, greyed toward silver when old, with strands (and silver streaks).
        let base = labels.hair.rgb();
        let hair_rgb = if labels.young { base } else { mix(base, [165, 165, 170], 0.4) };
        let strand_rgb = if luminance(hair_rgb) < 70.0 {
            mix(hair_rgb, [255, 255, 255], 0.2)
        } else {
            scale(hair_rgb, 0.72)
        };
        let (hair_ink, strand_ink) = (ink(hair_rgb, 1.0), ink(strand_rgb, 0.8));
        let streak_ink = ink([222, 222, 228], 0.85);
        let strands = strand_paths(&l, c);
        let streaks = (!labels.young).then(|| streak_paths(&l, c)).flatten();
        let (strand_w, streak_w) = (l.line(0.035), l.line(0.05));
        fill(pm, &hair_back_path(&l, c), &hair_ink, hair_clip);
        stroke(pm, &strands, &strand_ink, strand_w, Some(&self.hair_shape));
        stroke(pm, &streaks, &streak_ink, streak_w, Some(&self.hair_shape));

        // Neck, shoulders, ears, face, nose: content only.
        let skin = ink(c.skin, 1.0);
        let shade = ink(scale(c.skin, 0.82), 1.0);
        let outline = ink(scale(c.skin, 0.62), 1.0);
        let (nl, nt, nr, nb) = l.neck();
        if let Some(neck) = Rect::from_ltrb(nl, nt, nr, nb) {
            pm.fill_rect(neck, &shade, Transform::identity(), None);
        }
        let (sx, sy, srx, sry) = l.shoulders();
        fill(pm, &ellipse(sx, sy, srx, sry), &ink(c.clothing, 1.0), None);
        for side in [-1.0, 1.0] {
            let ear = ellipse(cx + side * 0.97 * rx, l.ey + 0.1 * ry, 0.15 * rx, 0.22 * ry);
            fill(pm, &ear, &skin, None);
            stroke(pm, &ear, &outline, l.line(0.04), None);
        }
        let face = ellipse(cx, cy, rx, ry);
        fill(pm, &face, &skin, None);
        stroke(pm, &face, &outline, l.line(0.045), None);
        let nose_y = cy + 0.22 * ry;
        let bridge =
            quad((cx + 0.04 * u, l.ey + 0.15 * u), (cx + 0.1 * u, nose_y - 0.1 * u), (cx + 0.06 * u, nose_y));
        stroke(pm, &bridge, &shade, l.line(0.04), None);
        let nostrils = quad(
            (cx - 0.13 * u, nose_y - 0.02 * u),
            (cx, nose_y + 0.08 * u),
            (cx + 0.13 * u, nose_y - 0.02 * u),
        );
        stroke(pm, &nostrils, &outline, l.line(0.05), None);

        // Age: wrinkle lines.
        if !labels.young {
            let wrinkle = ink(mix(c.skin, [60, 30, 20], 0.6), 1.0);
            stroke(pm, &wrinkle_paths(&l), &wrinkle, wrinkle_width(&l), young_clip);
        }

        // `male`: beard shading with stubble.
        if labels.male {
            let beard = beard_path(&l);
            fill(pm, &beard, &ink([50, 38, 32], 0.45), Some(male_region));
            let stubble = beard.as_ref().and_then(|b| stubble_path(&l, c, b.bounds()));
            fill(pm, &stubble, &ink([30, 22, 18], 0.6), Some(&self.beard_shape));
        }

        draw_expression(pm, c, &l, labels.expression, Some(expr_region));

        // Fringe last: it lies over the forehead (and raised brows, like real hair).
        fill(pm, &fringe_path(&l, c), &hair_ink, hair_clip);
        stroke(pm, &strands, &strand_ink, strand_w, Some(&self.fringe_shape));
        stroke(pm, &streaks, &streak_ink, streak_w, Some(&self.fringe_shape));
    }

    /// Copies the opaque pixmap out as RGB with the content's pixel noise.
    fn read_rgb(&self, c: &Content, out: &mut [u8]) {
        let pixels = self.pixmap.data().chunks_exact(4).zip(out.chunks_exact_mut(3));
        for (p, (px, o)) in pixels.enumerate() {
            let noise = pixel_noise(c.noise_seed, p);
            for ch in 0..3 {
                o[ch] = add_noise(px[ch], noise[ch]);
            }
        }
    }
}

fn wrinkle_width(l: &Layout) -> f32 {
    l.line(0.05)
}

fn luminance(c: [u8; 3]) -> f32 {
    0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
}

/// Per-pixel noise in `-NOISE_AMPLITUDE..=NOISE_AMPLITUDE`, from the content's seed only.
fn pixel_noise(seed: u64, pixel: usize) -> [i32; 3] {
    let h = mix64(seed ^ (pixel as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let span = 2 * NOISE_AMPLITUDE + 1;
    [0, 16, 32].map(|shift| ((h >> shift) & 0xFFFF) as i32 % span - NOISE_AMPLITUDE)
}

fn add_noise(v: u8, n: i32) -> u8 {
    (i32::from(v) + n).clamp(0, 255) as u8
}

fn draw_background(pm: &mut Pixmap, c: &Content, l: &Layout) {
    let [r, g, b] = c.background;
    pm.fill(Color::from_rgba8(r, g, b, 255));
    let s = l.s;
    let Some(full) = Rect::from_xywh(0.0, 0.0, s, s) else {
        return;
    };
    let centre = s * 0.5;
    let angle = c.texture_angle;
    let accent = |alpha| ink(c.accent, alpha);
    match c.texture {
        Texture::Gradient => {
            let (sin, cos) = angle.to_radians().sin_cos();
            let (dx, dy) = (cos * centre, sin * centre);
            let opaque = |rgb: [u8; 3]| Color::from_rgba8(rgb[0], rgb[1], rgb[2], 255);
            let shader = LinearGradient::new(
                Point::from_xy(centre - dx, centre - dy),
                Point::from_xy(centre + dx, centre + dy),
                vec![GradientStop::new(0.0, opaque(c.background)), GradientStop::new(1.0, opaque(c.accent))],
                SpreadMode::Pad,
                Transform::identity(),
            );
            if let Some(shader) = shader {
                let paint = Paint { shader, ..accent(1.0) };
                pm.fill_rect(full, &paint, Transform::identity(), None);
            }
        }
        Texture::Stripes => {
            // Vertical bands over an oversized square, rotated about the centre.
            let period = c.texture_scale * s;
            let mut pb = PathBuilder::new();
            let mut x = -s;
            while x < 2.0 * s {
                if let Some(r) = Rect::from_xywh(x, -s, period * 0.5, 3.0 * s) {
                    pb.push_rect(r);
                }
                x += period;
            }
            if let Some(p) = pb.finish() {
                let ts = Transform::from_rotate_at(angle, centre, centre);
                pm.fill_path(&p, &accent(0.55), FillRule::Winding, ts, None);
            }
        }
        Texture::Blobs => {
            let mut rng = Sampler::for_sample(c.noise_seed, STREAM_BACKGROUND, 0);
            let mut pb = PathBuilder::new();
            for _ in 0..7 {
                let (x, y) = (rng.range(0.0, s), rng.range(0.0, s));
                pb.push_circle(x, y, rng.range(0.6, 1.4) * c.texture_scale * s);
            }
            fill(pm, &pb.finish(), &accent(0.6), None);
        }
    }
}

/// Eyes, brows, nose wrinkles and mouth for expression `e`, clipped to `clip`.
fn draw_expression(pm: &mut Pixmap, c: &Content, l: &Layout, e: Expression, clip: Option<&Mask>) {
    let u = l.u;
    let pose = Pose::of(e);
    let lid = ink(mix(c.skin, [25, 15, 10], 0.8), 1.0);
    let brow = ink(mix(c.skin, [40, 28, 22], 0.8), 1.0);
    let (sclera, iris, pupil) = (ink([242, 242, 236], 1.0), ink(c.iris, 1.0), ink([15, 10, 10], 1.0));
    for side in [-1.0f32, 1.0] {
        let ex = l.cx + side * l.eye_dx;
        let (ew, eh) = (0.2 * u, 0.1 * u * pose.eye_open);
        let eye = ellipse(ex, l.ey, ew, eh);
        fill(pm, &eye, &sclera, clip);
        let (ir, pr) = (0.085 * u, 0.04 * u);
        fill(pm, &ellipse(ex, l.ey, ir, ir.min(eh * 0.95)), &iris, clip);
        fill(pm, &ellipse(ex, l.ey, pr, pr.min(eh * 0.8)), &pupil, clip);
        stroke(pm, &eye, &lid, l.line(0.045), clip);
        // Upper lid: a heavier line over the top half of the eye.
        let upper = quad((ex - ew, l.ey), (ex, l.ey - 2.0 * eh), (ex + ew, l.ey));
        stroke(pm, &upper, &lid, l.line(0.06), clip);

        // Brow from the inner end (towards the midline) to the outer end.
        let lift = if side > 0.0 { pose.brow_right } else { 0.0 };
        let by = l.ey - (0.3 + lift) * u;
        let inner = (ex - side * 0.2 * u, by - pose.brow_inner * u);
        let outer = (ex + side * 0.24 * u, by - pose.brow_outer * u);
        let mid = ((inner.0 + outer.0) * 0.5, (inner.1 + outer.1) * 0.5 - pose.brow_arch * u);
        stroke(pm, &quad(inner, mid, outer), &brow, l.line(pose.brow_width), clip);
    }

    if pose.nose_wrinkles {
        let mut pb = PathBuilder::new();
        for k in 0..3 {
            let y = l.ey + (0.02 + 0.08 * k as f32) * u;
            pb.move_to(l.cx - 0.1 * u, y);
            pb.quad_to(l.cx, y - 0.05 * u, l.cx + 0.1 * u, y);
        }
        let crease = ink(mix(c.skin, [60, 30, 20], 0.55), 1.0);
        stroke(pm, &pb.finish(), &crease, l.line(0.05), clip);
    }

    let lip = ink(mix(c.skin, [165, 55, 60], 0.6), 1.0);
    let dark = ink([62, 16, 22], 1.0);
    let teeth = ink([246, 244, 236], 1.0);
    let m = |dx, dy| l.mouth(dx, dy);
    match e {
        Expression::Neutral => {
            let line = quad(m(-0.3, 0.0), m(0.0, 0.02), m(0.3, 0.0));
            stroke(pm, &line, &lip, l.line(0.09), clip);
        }
        Expression::Angry => {
            // Short, pressed, corners turned down.
            let line = quad(m(-0.22, 0.05), m(0.0, -0.06), m(0.22, 0.05));
            stroke(pm, &line, &lip, l.line(0.13), clip);
        }
        Expression::Contemptuous => {
            // One-sided smirk: the right corner pulled up, with a dimple.
            let line = quad(m(-0.28, 0.04), m(0.1, 0.07), m(0.34, -0.18));
            stroke(pm, &line, &lip, l.line(0.09), clip);
            let dimple = quad(m(0.38, -0.26), m(0.45, -0.17), m(0.41, -0.07));
            stroke(pm, &dimple, &lid, l.line(0.045), clip);
        }
        Expression::Disgusted => {
            // Upper lip raised high on the left, baring teeth; lower lip flat.
            let outer = lens(m(-0.34, 0.06), m(-0.22, -0.36), m(0.3, 0.06), m(0.0, 0.16));
            fill(pm, &outer, &dark, clip);
            let bared = lens(m(-0.27, -0.01), m(-0.18, -0.24), m(0.14, 0.02), m(-0.06, 0.04));
            fill(pm, &bared, &teeth, clip);
            stroke(pm, &outer, &lip, l.line(0.07), clip);
        }
        Expression::Fearful => {
            // Stretched open grimace: wide, clenched teeth above a dark gap.
            let outer = lens(m(-0.36, 0.06), m(0.0, -0.2), m(0.36, 0.06), m(0.0, 0.4));
            fill(pm, &outer, &dark, clip);
            let row = lens(m(-0.3, 0.0), m(0.0, -0.16), m(0.3, 0.0), m(0.0, 0.1));
            fill(pm, &row, &teeth, clip);
            stroke(pm, &outer, &lip, l.line(0.06), clip);
        }
        Expression::Happy => {
            // Big open grin: teeth along the top, dark mouth below.
            let outer = lens(m(-0.4, -0.1), m(0.0, 0.06), m(0.4, -0.1), m(0.0, 0.52));
            fill(pm, &outer, &teeth, clip);
            let inner = lens(m(-0.3, 0.02), m(0.0, 0.14), m(0.3, 0.02), m(0.0, 0.42));
            fill(pm, &inner, &dark, clip);
            stroke(pm, &outer, &lip, l.line(0.06), clip);
        }
        Expression::Sad => {
            let line = quad(m(-0.32, 0.18), m(0.0, -0.26), m(0.32, 0.18));
            stroke(pm, &line, &lip, l.line(0.09), clip);
        }
        Expression::Surprised => {
            let o = ellipse(l.cx, l.my + 0.04 * u, 0.14 * u, 0.21 * u);
            fill(pm, &o, &dark, clip);
            stroke(pm, &o, &lip, l.line(0.07), clip);
        }
    }
}

/// Renders `content` in the domain `labels` at `size x size` pixels.
///
/// `render(content, target)` is the exact result of translating `render(content, labels)`
/// to `target`. For many images of one size, reuse a [`Renderer`].
pub fn render(content: &Content, labels: &Labels, size: u32) -> Result<RgbImage, SyntheticError> {
    Ok(Renderer::new(size)?.render(content, labels))
}

/// Pixels (row-major, `size * size`) that changing `attribute` may alter for this content;
/// every pixel outside is identical for all values of that attribute.
pub fn region_mask(content: &Content, attribute: Attribute, size: u32) -> Result<Vec<bool>, SyntheticError> {
    Ok(Renderer::new(size)?.region_mask(content, attribute))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 64;

    fn base() -> Labels {
        Labels::from_rafd(RafdLabels { expression: Expression::Neutral })
    }

    /// All 96 label states.
    fn all_labels() -> impl Iterator<Item = Labels> {
        CelebaLabels::all().into_iter().flat_map(|c| {
            Expression::ALL
                .into_iter()
                .map(move |expression| Labels::from_celeba(c).with_rafd(RafdLabels { expression }))
        })
    }

    /// Every label state that differs from `base` in exactly `attribute`.
    fn variants(attribute: Attribute, base: Labels) -> Vec<Labels> {
        match attribute {
            Attribute::Hair => Hair::ALL.iter().map(|&hair| Labels { hair, ..base }).collect(),
            Attribute::Male => vec![Labels { male: !base.male, ..base }],
            Attribute::Young => vec![Labels { young: !base.young, ..base }],
            Attribute::Expression => {
                Expression::ALL.iter().map(|&expression| Labels { expression, ..base }).collect()
            }
        }
        .into_iter()
        .filter(|l| *l != base)
        .collect()
    }

    /// Inside `region`: the mean absolute per-channel difference, and how many pixels
    /// differ strongly (summed over channels by more than 90 levels).
    fn diff_stats(a: &RgbImage, b: &RgbImage, region: &[bool]) -> (f32, usize) {
        let (mut sum, mut n, mut strong) = (0u32, 0u32, 0);
        let pixels = a.data.chunks_exact(3).zip(b.data.chunks_exact(3));
        for ((x, y), _) in pixels.zip(region).filter(|&(_, &inside)| inside) {
            let d: u32 = x.iter().zip(y).map(|(&x, &y)| u32::from(x.abs_diff(y))).sum();
            sum += d;
            n += 3;
            strong += usize::from(d > 90);
        }
        (sum as f32 / n.max(1) as f32, strong)
    }

    #[test]
    fn deterministic_and_index_dependent() {
        for split in [LabelSet::Celeba, LabelSet::Rafd] {
            let (c1, l1) = sample(split, 7, 3);
            let (c2, l2) = sample(split, 7, 3);
            assert_eq!(c1, c2);
            assert_eq!(l1, l2);
            let a = render(&c1, &l1, SIZE).unwrap();
            let b = render(&c2, &l2, SIZE).unwrap();
            assert_eq!(a, b);
            // A reused renderer gives the same bytes as a fresh one.
            let mut r = Renderer::new(SIZE).unwrap();
            let (c3, l3) = sample(split, 7, 4);
            let _ = r.render(&c3, &l3);
            assert_eq!(r.render(&c1, &l1), a);
            assert_ne!(render(&c3, &l1, SIZE).unwrap(), a);
            assert_ne!(Content::sample(8, 3), c1);
        }
        // Pinned values: the streams must never change (with crate versions or otherwise).
        assert_eq!(mix64(0), 0);
        assert_eq!(SplitMix64(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let c = Content::sample(0, 0);
        assert_eq!((c.skin, c.texture, c.long_hair), ([229, 180, 142], Texture::Blobs, false));
        assert_eq!(c.noise_seed, 3_913_156_407_429_113_575);
        let expressions: Vec<_> = (0..4).map(|i| sample(LabelSet::Rafd, 0, i).1.expression).collect();
        use Expression::{Contemptuous, Disgusted, Surprised};
        assert_eq!(expressions, [Contemptuous, Disgusted, Surprised, Contemptuous]);
        let first = sample(LabelSet::Celeba, 0, 1).1.celeba();
        assert_eq!(first, CelebaLabels { hair: Hair::Black, male: true, young: true });
    }

    #[test]
    fn labels_change_only_their_region_and_never_the_content() {
        let mut r = Renderer::new(SIZE).unwrap();
        for index in 0..12 {
            let content = Content::sample(1, index);
            let corner = |img: &RgbImage| img.pixel(0, 0);
            for base in [base(), Labels { male: true, young: false, hair: Hair::Black, ..base() }] {
                let reference = r.render(&content, &base);
                for attribute in Attribute::ALL {
                    let region = r.region_mask(&content, attribute);
                    let inside = region.iter().filter(|&&m| m).count();
                    assert!(inside > 0 && inside < region.len() / 2, "{attribute:?} region size {inside}");
                    for labels in variants(attribute, base) {
                        let img = r.render(&content, &labels);
                        for (p, (a, b)) in
                            img.data.chunks_exact(3).zip(reference.data.chunks_exact(3)).enumerate()
                        {
                            assert!(
                                region[p] || a == b,
                                "{labels:?} changed pixel {p} outside the {attribute:?} region"
                            );
                        }
                        assert_eq!(corner(&img), corner(&reference));
                    }
                }
            }
        }
    }

    #[test]
    fn regions_do_not_cut_off_any_drawing() {
        // Drawing without the region clips must give the same image: the regions contain
        // all the label-dependent strokes, so the clips only guarantee, never truncate.
        for (size, contents) in [(16, 8), (32, 8), (64, 12)] {
            let mut clipped = Renderer::new(size).unwrap();
            let mut free = Renderer::new(size).unwrap();
            free.clip_to_regions = false;
            for index in 0..contents {
                let content = Content::sample(2, index);
                for labels in all_labels() {
                    let a = clipped.render(&content, &labels);
                    let b = free.render(&content, &labels);
                    let cut = a.data.chunks_exact(3).zip(b.data.chunks_exact(3));
                    let cut = cut.filter(|(x, y)| x != y).count();
                    assert_eq!(cut, 0, "size {size}, content {index}, {labels:?}");
                }
            }
        }
    }

    #[test]
    fn every_domain_change_is_visible() {
        let mut r = Renderer::new(SIZE).unwrap();
        let old_blond_man = Labels { hair: Hair::Blond, male: true, young: false, ..base() };
        for index in 0..24 {
            let content = Content::sample(3, index);
            for base in [base(), old_blond_man] {
                let reference = r.render(&content, &base);
                for attribute in Attribute::ALL {
                    let region = r.region_mask(&content, attribute);
                    // Expressions change small features inside a larger region.
                    let (min_mean, min_strong) = match attribute {
                        Attribute::Expression => (2.5, 10),
                        _ => (6.0, 20),
                    };
                    for labels in variants(attribute, base) {
                        let img = r.render(&content, &labels);
                        let (mean, strong) = diff_stats(&img, &reference, &region);
                        assert!(
                            mean > min_mean && strong >= min_strong,
                            "content {index}: {base:?} -> {labels:?}: mean {mean}, {strong} px"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn expressions_are_pairwise_distinct() {
        let mut r = Renderer::new(SIZE).unwrap();
        for index in 0..24 {
            let content = Content::sample(4, index);
            let region = r.region_mask(&content, Attribute::Expression);
            let imgs: Vec<_> = Expression::ALL
                .iter()
                .map(|&expression| r.render(&content, &Labels { expression, ..base() }))
                .collect();
            for i in 0..imgs.len() {
                for j in i + 1..imgs.len() {
                    let (mean, strong) = diff_stats(&imgs[i], &imgs[j], &region);
                    let (a, b) = (Expression::ALL[i], Expression::ALL[j]);
                    assert!(
                        mean > 2.5 && strong >= 10,
                        "content {index}: {a:?} vs {b:?}: mean {mean}, {strong} px"
                    );
                }
            }
        }
    }

    #[test]
    fn sizes_are_checked_and_all_valid_sizes_render() {
        let (content, labels) = sample(LabelSet::Celeba, 0, 0);
        for size in [0, MIN_SIZE - 1, MAX_SIZE + 1] {
            assert_eq!(render(&content, &labels, size), Err(SyntheticError::InvalidSize { size }));
            assert!(region_mask(&content, Attribute::Hair, size).is_err());
        }
        for size in [MIN_SIZE, 17, 32, 63, 64, 100, 128, MAX_SIZE] {
            let img = render(&content, &labels, size).unwrap();
            assert_eq!(img.data.len(), (size * size * 3) as usize);
            assert_eq!(
                region_mask(&content, Attribute::Expression, size).unwrap().len(),
                (size * size) as usize
            );
        }
    }

    #[test]
    fn chw_paths_agree() {
        let (content, labels) = sample(LabelSet::Rafd, 5, 9);
        let mut r = Renderer::new(32).unwrap();
        let img = r.render(&content, &labels);
        let chw = img.to_chw_f32();
        let mut direct = vec![0.0; chw.len()];
        r.render_chw_into(&content, &labels, &mut direct).unwrap();
        assert_eq!(chw, direct);
        assert!(chw.iter().all(|v| (-1.0..=1.0).contains(v)));
        // Channel planes: the first value of the G plane is the G byte of pixel 0.
        assert_eq!(chw[32 * 32], f32::from(img.data[1]) / 127.5 - 1.0);
        assert!(r.render_chw_into(&content, &labels, &mut direct[1..]).is_err());
        let mut out = RgbImage::new(32, 32);
        r.render_into(&content, &labels, &mut out).unwrap();
        assert_eq!(out, img);
    }

    #[test]
    fn label_vectors_round_trip_and_splits_are_balanced() {
        for c in CelebaLabels::all() {
            assert_eq!(CelebaLabels::from_vector(&c.to_vector()).unwrap(), c);
            assert_eq!(Labels::from_celeba(c).celeba(), c);
        }
        for e in Expression::ALL {
            let r = RafdLabels { expression: e };
            assert_eq!(RafdLabels::from_vector(&r.to_vector()).unwrap(), r);
            assert_eq!(Expression::from_index(e.index()).unwrap(), e);
        }
        assert_eq!(Expression::ALL.map(Expression::name), RAFD_EXPRESSIONS);
        assert!(CelebaLabels::from_vector(&[0.0; 4]).is_err());
        assert!(Expression::from_index(8).is_err());

        let n = 2400;
        let (mut hair, mut male, mut young) = ([0usize; 3], 0, 0);
        let mut expr = [0usize; 8];
        for i in 0..n {
            let (_, l) = sample(LabelSet::Celeba, 11, i);
            assert_eq!(l.expression, Expression::Neutral);
            hair[l.hair.index()] += 1;
            male += usize::from(l.male);
            young += usize::from(l.young);
            let (_, l) = sample(LabelSet::Rafd, 11, i);
            assert_eq!(l.celeba(), RAFD_DEFAULT_ATTRIBUTES);
            expr[l.expression.index()] += 1;
        }
        let n = n as usize;
        assert!(hair.iter().all(|&h| h.abs_diff(n / 3) < n / 20), "{hair:?}");
        assert!(male.abs_diff(n / 2) < n / 20 && young.abs_diff(n / 2) < n / 20);
        assert!(expr.iter().all(|&e| e.abs_diff(n / 8) < n / 20), "{expr:?}");
        // The two splits show different people.
        assert_ne!(sample(LabelSet::Celeba, 11, 0).0, sample(LabelSet::Rafd, 11, 0).0);
    }
}
