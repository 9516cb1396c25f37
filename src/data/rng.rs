//! A small deterministic random generator (xoshiro256++ seeded through SplitMix64) and seed
//! derivation.
//!
//! `rand`'s `StdRng` is explicitly not value-stable across releases, and its shuffles have
//! changed algorithm between versions. Benchmarks written by `delo prepare`, missing tables and
//! batch orders must be reproducible from a seed alone, so they use this generator, whose
//! output is fixed by this file.

/// One step of SplitMix64: a bijective 64-bit mixer.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a string: separates the seed streams of different purposes, and turns names
/// (e.g. a class name) into seed parts.
pub fn hash_str(tag: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in tag.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Derives a seed from a purpose tag and a list of integers (run seed, task, split, epoch, ...).
/// Different tags or parts give unrelated streams; the same ones always give the same seed.
pub fn derive_seed(tag: &str, parts: &[u64]) -> u64 {
    let mut state = hash_str(tag);
    let mut h = splitmix64(&mut state);
    for &p in parts {
        state ^= p.wrapping_add(h);
        h = splitmix64(&mut state);
    }
    h
}

/// xoshiro256++: fast, good statistical quality, fully specified here.
#[derive(Clone, Debug)]
pub struct DetRng {
    s: [u64; 4],
}

impl DetRng {
    /// A generator whose whole state is expanded from `seed` with SplitMix64.
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        DetRng { s }
    }

    /// A generator for `derive_seed(tag, parts)`.
    pub fn derived(tag: &str, parts: &[u64]) -> Self {
        DetRng::new(derive_seed(tag, parts))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..n` without modulo bias (Lemire's multiply-and-reject).
    /// `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "DetRng::below(0)");
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// A uniform float in `[0, 1)` with 24 random bits.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit_f32() < p
    }

    /// Fisher-Yates shuffle in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// A random element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_seed_differs() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = DetRng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = DetRng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = DetRng::new(8);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn derive_seed_separates_tags_and_parts() {
        let base = derive_seed("missing", &[1, 2, 3]);
        assert_eq!(base, derive_seed("missing", &[1, 2, 3]));
        assert_ne!(base, derive_seed("loader", &[1, 2, 3]));
        assert_ne!(base, derive_seed("missing", &[1, 2, 4]));
        assert_ne!(base, derive_seed("missing", &[1, 3, 2]));
        assert_ne!(derive_seed("x", &[0]), derive_seed("x", &[0, 0]));
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = DetRng::new(1);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[r.below(6)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "counts {counts:?}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut r = DetRng::new(3);
        let mut v: Vec<usize> = (0..100).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }
}
