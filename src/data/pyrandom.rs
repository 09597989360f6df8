//! A bit-exact re-implementation of the parts of CPython's `random` module that
//! the reference StarGAN code depends on.
//!
//! The reference `CelebA.preprocess` decides which images form the test split
//! with `random.seed(1234); random.shuffle(lines)`. To reproduce that split
//! (and so evaluate on exactly the same 1,999 images) we need the very same
//! stream of numbers, not merely "a Mersenne Twister":
//!
//! * seeding follows CPython 3's `random_seed`: an `int` seed is replaced by its
//!   absolute value, cut into 32-bit words (least significant first, at least
//!   one word) and fed to the reference MT19937 `init_by_array`;
//! * [`Random::getrandbits`] keeps the *most* significant bits of each 32-bit
//!   output, filling wider results word by word from the least significant end,
//!   as `_random_Random_getrandbits_impl` does;
//! * [`Random::randbelow`] is `_randbelow_with_getrandbits` (rejection sampling
//!   on `n.bit_length()` bits), which `shuffle` uses;
//! * [`Random::shuffle`] is the Fisher–Yates loop of CPython 3.11
//!   (`for i in reversed(range(1, len(x))): j = randbelow(i + 1)`);
//! * [`Random::random`] is `genrand_res53`.
//!
//! Everything is checked against values printed by CPython 3.11 in the tests.

/// MT19937 state size in 32-bit words.
const N: usize = 624;
/// MT19937 middle word offset.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// CPython's `random.Random` generator (MT19937 plus the Python-level helpers).
#[derive(Clone)]
pub struct Random {
    mt: [u32; N],
    index: usize,
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The 624-word state is noise in logs; the position is enough to tell
        // generators apart while debugging.
        f.debug_struct("Random").field("index", &self.index).finish_non_exhaustive()
    }
}

impl Random {
    /// Equivalent of `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let mut rng = Self { mt: [0; N], index: N };
        rng.seed(seed);
        rng
    }

    /// Equivalent of `random.seed(seed)` for a non-negative integer seed.
    pub fn seed(&mut self, seed: u64) {
        // Truncation is intended: we cut the integer into its two 32-bit words.
        self.seed_words(&[seed as u32, (seed >> 32) as u32]);
    }

    /// Equivalent of `random.seed(seed)` for any integer that fits in `i128`;
    /// like CPython, the sign is discarded (`seed(-7)` == `seed(7)`).
    pub fn seed_i128(&mut self, seed: i128) {
        let n = seed.unsigned_abs();
        let words: [u32; 4] = std::array::from_fn(|i| (n >> (32 * i)) as u32);
        self.seed_words(&words);
    }

    /// Seeds from an arbitrary-precision non-negative integer given as its
    /// 32-bit words, least significant first (CPython's internal key format).
    ///
    /// High zero words are ignored, exactly as CPython strips them when it
    /// converts `abs(n)` to a key, so `[5, 0, 0]` and `[5]` seed identically.
    pub fn seed_words(&mut self, words: &[u32]) {
        let len = words.iter().rposition(|&w| w != 0).map_or(0, |p| p + 1);
        // CPython always passes at least one word, so a zero seed uses key [0].
        let key = if len == 0 { &[0u32][..] } else { &words[..len] };
        self.init_by_array(key);
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] =
                (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        // MSB is 1, assuring a non-zero initial array.
        self.mt[0] = 0x8000_0000;
        self.index = N;
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.mt[k] & UPPER_MASK) | (self.mt[(k + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The raw MT19937 output (`genrand_uint32` in `_randommodule.c`).
    pub fn genrand_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.getrandbits(k)` for `k <= 64` (`k == 0` returns 0, as in 3.9+).
    ///
    /// # Panics
    /// If `k > 64`; that is a programming error, not a data-dependent condition.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports at most 64 bits, got {k}");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.genrand_u32() >> (32 - k));
        }
        // Wider values are assembled from the least significant word upwards;
        // only the last (most significant) word is truncated to the bits left.
        let low = u64::from(self.genrand_u32());
        let high = u64::from(self.genrand_u32() >> (64 - k));
        low | (high << 32)
    }

    /// `random._randbelow(n)` (the `getrandbits` rejection method): a uniform
    /// integer in `0..n`. Returns 0 for `n == 0`, like CPython < 3.12 did,
    /// without consuming randomness.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = u64::BITS - n.leading_zeros(); // n.bit_length()
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)` (CPython 3.11 algorithm), in place.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            // `j <= i < x.len()`, so the conversion back to usize is lossless.
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }

    /// `random.random()`: a float in `[0, 1)` with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = self.genrand_u32() >> 5;
        let b = self.genrand_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Random;

    #[test]
    fn raw_outputs_match_cpython() {
        // python3.11: r = random.Random(1234); [r.getrandbits(32) for _ in range(5)]
        let mut r = Random::new(1234);
        let got: Vec<u64> = (0..5).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [4150886329, 3342196574, 1892932127, 501869158, 32175636]);
    }

    #[test]
    fn random_float_matches_cpython() {
        // python3.11: r = random.Random(1234); [repr(r.random()) for _ in range(3)]
        let mut r = Random::new(1234);
        assert_eq!(r.random(), 0.9664535356921388);
        assert_eq!(r.random(), 0.4407325991753527);
        assert_eq!(r.random(), 0.007491470058587191);
    }

    #[test]
    fn getrandbits_widths_match_cpython() {
        // python3.11: r = random.Random(1234); [r.getrandbits(k) for k in (1,7,31,33,64,0)]
        let mut r = Random::new(1234);
        let got: Vec<u64> = [1, 7, 31, 33, 64, 0].iter().map(|&k| r.getrandbits(k)).collect();
        assert_eq!(got, [1, 99, 946466063, 501869158, 16804540376168033093, 0]);
    }

    #[test]
    fn seeds_match_cpython() {
        // python3.11: r = random.Random(seed); [r.getrandbits(32) for _ in range(3)]
        let cases: [(i128, [u32; 3]); 5] = [
            (0, [3626764237, 1654615998, 3255389356]),
            (42, [2746317213, 478163327, 107420369]),
            ((1 << 32) + 5, [675479763, 2085189291, 1213270837]),
            (u64::MAX as i128, [93740670, 1068495656, 1452108352]),
            (-7, [1390851128, 4071050724, 647892279]),
        ];
        for (seed, want) in cases {
            let mut r = Random::new(0);
            r.seed_i128(seed);
            let got: [u32; 3] = std::array::from_fn(|_| r.genrand_u32());
            assert_eq!(got, want, "seed {seed}");
            if let Ok(s) = u64::try_from(seed) {
                let mut r = Random::new(s);
                let got: [u32; 3] = std::array::from_fn(|_| r.genrand_u32());
                assert_eq!(got, want, "u64 seed {seed}");
            }
        }
        // High zero words do not change the key.
        let mut a = Random::new(0);
        a.seed_words(&[5, 0, 0]);
        let mut b = Random::new(5);
        assert_eq!(a.genrand_u32(), b.genrand_u32());
    }

    #[test]
    fn randbelow_matches_cpython() {
        // python3.11: r = random.Random(1234); [r._randbelow(n) for n in (1,2,3,10,1000,2**31+1)]
        let mut r = Random::new(1234);
        let got: Vec<u64> = [1, 2, 3, 10, 1000, (1 << 31) + 1].iter().map(|&n| r.randbelow(n)).collect();
        assert_eq!(got, [0, 0, 0, 1, 932, 150006740]);
    }

    #[test]
    fn shuffle_20_matches_cpython() {
        // python3.11: random.seed(1234); x = list(range(20)); random.shuffle(x); x
        let mut r = Random::new(1234);
        let mut x: Vec<u32> = (0..20).collect();
        r.shuffle(&mut x);
        assert_eq!(x, [19, 13, 4, 9, 16, 7, 6, 8, 17, 18, 5, 12, 15, 11, 10, 1, 2, 0, 3, 14]);
    }

    #[test]
    fn large_shuffle_checksums_match_cpython() {
        // python3.11: r = random.Random(seed); x = list(range(n)); r.shuffle(x)
        //             sum((i+1)*v for i, v in enumerate(x)) % 2**64, x[:3]
        let cases: [(u64, u64, u64, [u64; 3]); 3] = [
            (1234, 1000, 245692808, [56, 306, 558]),
            (1, 5000, 31221541934, [1154, 2818, 409]),
            (99, 202599, 2079424592978417, [3785, 148052, 157190]),
        ];
        for (seed, n, checksum, head) in cases {
            let mut r = Random::new(seed);
            let mut x: Vec<u64> = (0..n).collect();
            r.shuffle(&mut x);
            let sum = x.iter().zip(1u64..).fold(0u64, |acc, (&v, i)| acc.wrapping_add(i.wrapping_mul(v)));
            assert_eq!(sum, checksum, "seed {seed}, n {n}");
            assert_eq!(x[..3], head, "seed {seed}, n {n}");
        }
    }

    #[test]
    fn shuffle_trivial_lengths() {
        let mut r = Random::new(1);
        let mut empty: [u8; 0] = [];
        r.shuffle(&mut empty);
        let mut one = [7];
        r.shuffle(&mut one);
        assert_eq!(one, [7]);
    }
}
