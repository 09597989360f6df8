//! Counter-based randomness: every random draw of a run is a pure function of
//! (seed, purpose, counters), never of how much was drawn before.
//!
//! That makes a run reproducible whatever the number of loader threads or the prefetch depth, and
//! makes resuming trivial: iteration k of a resumed run draws exactly what iteration k of an
//! uninterrupted run drew, with no generator state to save.

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator with good statistical quality, fixed
/// forever (so no stream depends on a crate version). [`Stream`] and the built-in data's samplers
/// are built on it.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1) with 24 random bits (exactly representable as f32).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The SplitMix64 finaliser: a stateless 64-bit mixer, also used to derive keys and per-pixel noise.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A counter-keyed SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Stream {
    inner: SplitMix64,
}

/// 64-bit FNV-1a: a hash that is the same on every platform and Rust version, for names and ids
/// that must not change between runs (cache file names, serialization ids).
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash of one string.
    pub fn of(text: &str) -> u64 {
        let mut h = Fnv1a::default();
        h.write(text.as_bytes());
        h.0
    }
}

/// What a stream is drawn for; keeps streams of different purposes independent.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Purpose {
    EpochOrder = 1,
    Flip = 2,
    TargetPermutation = 3,
    PenaltyMix = 4,
    Replacement = 5,
}

impl Stream {
    /// The stream for `purpose` at the given counters (e.g. dataset index and iteration).
    pub fn new(seed: u64, purpose: Purpose, counters: &[u64]) -> Self {
        let mut h = mix(seed ^ 0x5851_f42d_4c95_7f2d);
        h = mix(h ^ (purpose as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for &c in counters {
            h = mix(h ^ c.wrapping_add(0x2545_f491_4f6c_dd1d));
        }
        Self { inner: SplitMix64(h) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in [0, 1) with 24 random bits (exactly representable as f32).
    pub fn uniform_f32(&mut self) -> f32 {
        self.inner.uniform_f32()
    }

    /// Uniform integer in [0, n), unbiased (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// A uniformly random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_pure_functions_of_their_keys() {
        let a: Vec<u64> = (0..4).map(|_| Stream::new(7, Purpose::Flip, &[1, 2]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let b = Stream::new(7, Purpose::Flip, &[1, 3]).next_u64();
        let c = Stream::new(7, Purpose::EpochOrder, &[1, 2]).next_u64();
        let d = Stream::new(8, Purpose::Flip, &[1, 2]).next_u64();
        assert!(a[0] != b && a[0] != c && a[0] != d);
    }

    #[test]
    fn permutation_is_a_permutation_and_roughly_uniform() {
        let mut counts = [[0u32; 4]; 4];
        for k in 0..4000 {
            let p = Stream::new(1, Purpose::TargetPermutation, &[k]).permutation(4);
            let mut sorted = p.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            for (pos, &v) in p.iter().enumerate() {
                counts[pos][v] += 1;
            }
        }
        for row in counts {
            for c in row {
                assert!((800..1200).contains(&c), "position/value count {c} far from 1000");
            }
        }
    }

    #[test]
    fn uniform_is_in_unit_interval_with_the_right_mean() {
        let mut s = Stream::new(3, Purpose::PenaltyMix, &[]);
        let xs: Vec<f32> = (0..10000).map(|_| s.uniform_f32()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
