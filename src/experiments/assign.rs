//! Arm assignment: which arm of an experiment a unit (a user id, a session id) belongs to,
//! computed the way the named SDK computes it, so the arm sluice tags an event with is the
//! arm the application showed.
//!
//! ```text
//!  growthbook-v2:  n = (fnv1a32(decimal(fnv1a32(seed ++ unit))) mod 10000) / 10000
//!                  arm i  where  start_i <= n < end_i,  [start_i, end_i) = cumulative weights
//!  murmur3:        b = floor(murmur3_x86_32(utf8(unit ++ seed), 1) / 2^32 * 10000)
//!                  arm i  where  b < end_i  (the first such i),  end_i = cumulative basis points
//! ```
//!
//! FNV-1a runs over UTF-16 code units, each XORed in whole, as the JavaScript SDK's
//! `charCodeAt` loop does; MurmurHash3 runs over the UTF-8 bytes, as Optimizely's SDKs do.

use serde::{Deserialize, Serialize};

/// The most arms one experiment may have.
pub const ARMS_MAX: usize = 32;

/// Optimizely's bucket count: a bucket value lies in `[0, OPTIMIZELY_BUCKETS)`.
pub const OPTIMIZELY_BUCKETS: u32 = 10_000;

/// Weights that sum to within this band are taken as the SDK's own fractions, unchanged; any
/// other sum is normalised (`50`/`50` becomes `0.5`/`0.5`). GrowthBook's `getBucketRanges`
/// accepts the same band.
const FRACTION_SUM_MIN: f64 = 0.99;
const FRACTION_SUM_MAX: f64 = 1.01;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

const MURMUR_C1: u32 = 0xcc9e_2d51;
const MURMUR_C2: u32 = 0x1b87_3593;
/// Optimizely's `HASH_SEED`.
const OPTIMIZELY_SEED: u32 = 1;

/// Which SDK's bucketing an experiment reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashKind {
    /// GrowthBook's hash version 2 (`hashVersion: 2`), with the weights as bucket ranges.
    #[serde(rename = "growthbook-v2")]
    GrowthbookV2,
    /// Optimizely's bucketing: MurmurHash3 x86_32, seed 1, over `unit ++ experiment id`.
    #[serde(rename = "murmur3")]
    Murmur3,
}

impl HashKind {
    /// The name used in the configuration (`hash = "growthbook-v2"`).
    pub fn as_str(self) -> &'static str {
        match self {
            HashKind::GrowthbookV2 => "growthbook-v2",
            HashKind::Murmur3 => "murmur3",
        }
    }

    /// The kind named `name` in the configuration, if any.
    pub fn from_name(name: &str) -> Option<HashKind> {
        match name {
            "growthbook-v2" => Some(HashKind::GrowthbookV2),
            "murmur3" => Some(HashKind::Murmur3),
            _ => None,
        }
    }
}

/// Why a set of arms was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// No arm was given.
    #[error("an experiment needs at least one arm")]
    NoArms,
    /// More than [`ARMS_MAX`] arms.
    #[error("an experiment has at most {max} arms, not {count}")]
    TooManyArms {
        /// How many were given.
        count: usize,
        /// [`ARMS_MAX`].
        max: usize,
    },
    /// An arm's name is empty.
    #[error("arm {index} has an empty name")]
    EmptyName {
        /// Its position in the list.
        index: usize,
    },
    /// Two arms share a name.
    #[error("arm {name:?} appears twice")]
    DuplicateArm {
        /// The name.
        name: String,
    },
    /// A weight that is zero, negative, NaN or infinite.
    #[error("arm {name:?} has weight {weight}; a weight must be positive and finite")]
    Weight {
        /// The arm.
        name: String,
        /// Its weight.
        weight: f64,
    },
    /// The weights are each finite but their sum is not.
    #[error("the arm weights sum to {sum}, which is not finite")]
    WeightSum {
        /// The sum.
        sum: f64,
    },
}

/// The arms of one experiment and how units are bucketed into them: a pure function of
/// (hash kind, seed, unit).
#[derive(Debug, Clone, PartialEq)]
pub struct Arms {
    names: Vec<String>,
    weights: Vec<f64>,
    seed: String,
    kind: HashKind,
    bucketing: Bucketing,
}

#[derive(Debug, Clone, PartialEq)]
enum Bucketing {
    /// The FNV state after the seed's code units, and each arm's `[start, end)`.
    Growthbook {
        seed_state: u32,
        ranges: Vec<(f64, f64)>,
    },
    /// Each arm's `endOfRange` in basis points.
    Murmur3 { ends: Vec<u32> },
}

impl Arms {
    /// Arms from `(name, weight)` pairs in order (the first is the control), bucketed by
    /// `kind` with `seed`: GrowthBook's experiment seed (by default its key), or Optimizely's
    /// experiment id.
    ///
    /// Weights are relative (`50`/`50`, `1`/`1`/`2`). Weights that already sum to within
    /// 0.99..=1.01 are GrowthBook's fractions and are used exactly as given, as the SDK
    /// uses them, so copying them from its experiment keeps every boundary bit-exact; such
    /// fractions summing below 1 leave part of the hash space in no arm (see
    /// [`Arms::assign`]). For murmur3 the weights become cumulative `endOfRange` values out of
    /// 10,000 (rounded to the nearest basis point, the last one 10,000), which match an
    /// Optimizely datafile when its traffic split is given in the same basis points.
    pub fn new<N: Into<String>>(
        arms: impl IntoIterator<Item = (N, f64)>,
        seed: &str,
        kind: HashKind,
    ) -> Result<Arms, Error> {
        let mut names: Vec<String> = Vec::new();
        let mut weights = Vec::new();
        let mut arms = arms.into_iter();
        while let Some((name, weight)) = arms.next() {
            let index = names.len();
            if index == ARMS_MAX {
                // Count the rest for the message, without keeping them.
                return Err(Error::TooManyArms {
                    count: index + 1 + arms.count(),
                    max: ARMS_MAX,
                });
            }
            let name = name.into();
            if name.is_empty() {
                return Err(Error::EmptyName { index });
            }
            if names.contains(&name) {
                return Err(Error::DuplicateArm { name });
            }
            if !(weight.is_finite() && weight > 0.0) {
                return Err(Error::Weight { name, weight });
            }
            names.push(name);
            weights.push(weight);
        }
        if names.is_empty() {
            return Err(Error::NoArms);
        }
        let sum: f64 = weights.iter().sum();
        if !sum.is_finite() {
            return Err(Error::WeightSum { sum });
        }
        let bucketing = match kind {
            HashKind::GrowthbookV2 => Bucketing::Growthbook {
                seed_state: fnv1a_utf16(FNV_OFFSET, seed),
                ranges: cumulative_ranges(&fractions(&weights, sum)),
            },
            HashKind::Murmur3 => Bucketing::Murmur3 {
                ends: basis_point_ends(&weights, sum),
            },
        };
        Ok(Arms {
            names,
            weights,
            seed: seed.to_owned(),
            kind,
            bucketing,
        })
    }

    /// The arm `unit` belongs to, as an index into [`Arms::names`]; `None` when its hash
    /// falls in no arm, which only GrowthBook fractions summing below 1 leave room for (the
    /// SDK, too, puts such a unit in no variation).
    ///
    /// Allocates nothing: the hashes run over the string in place, and GrowthBook's inner
    /// step hashes the decimal digits of a `u32` from a stack buffer.
    pub fn assign(&self, unit: &str) -> Option<usize> {
        match &self.bucketing {
            Bucketing::Growthbook { seed_state, ranges } => {
                let outer = fnv1a_utf16(*seed_state, unit);
                choose_variation(unit_interval(fnv1a_decimal(outer), 10_000), ranges)
            }
            Bucketing::Murmur3 { ends } => {
                let bucket = optimizely_bucket(unit, &self.seed);
                ends.iter().position(|&end| bucket < end)
            }
        }
    }

    /// The arm names, the control first.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of arm `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// The index of the arm named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The weights as configured, in arm order (what the sample-ratio check expects).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// How many arms (at least one).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: an experiment has at least one arm.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The seed.
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// The hash kind.
    pub fn kind(&self) -> HashKind {
        self.kind
    }
}

/// The fractions GrowthBook would be given: the weights themselves when they already sum to
/// about 1, else each weight over the sum.
fn fractions(weights: &[f64], sum: f64) -> Vec<f64> {
    if (FRACTION_SUM_MIN..=FRACTION_SUM_MAX).contains(&sum) {
        weights.to_vec()
    } else {
        weights.iter().map(|w| w / sum).collect()
    }
}

/// `[start, end)` per fraction, accumulated left to right in `f64` as `getBucketRanges` does
/// at full coverage.
fn cumulative_ranges(fractions: &[f64]) -> Vec<(f64, f64)> {
    let mut cumulative = 0.0;
    fractions
        .iter()
        .map(|&w| {
            let start = cumulative;
            cumulative += w;
            (start, start + w)
        })
        .collect()
}

/// Cumulative `endOfRange` per arm, out of [`OPTIMIZELY_BUCKETS`]; the last is always the
/// full range, so every bucket lands in an arm.
fn basis_point_ends(weights: &[f64], sum: f64) -> Vec<u32> {
    let buckets = f64::from(OPTIMIZELY_BUCKETS);
    let mut cumulative = 0.0;
    let mut ends: Vec<u32> = weights
        .iter()
        .map(|&w| {
            cumulative += w;
            // In [0, 10000] by construction; the cast saturates in any case.
            (cumulative / sum * buckets).round().clamp(0.0, buckets) as u32
        })
        .collect();
    if let Some(last) = ends.last_mut() {
        *last = OPTIMIZELY_BUCKETS;
    }
    ends
}

/// FNV-1a 32 over the UTF-16 code units of `s`, continuing from state `hash`.
///
/// The SDK's loop is `h ^= s.charCodeAt(i); h += (h<<1) + (h<<4) + (h<<7) + (h<<8) +
/// (h<<24)` on JavaScript numbers: the XOR and the shifts are on int32 values, their sum is
/// exact in a double (under 2^53), and the next XOR or the final `>>> 0` reduces it mod
/// 2^32. The sum is `h * (1 + 2 + 16 + 128 + 256 + 2^24) = h * 0x01000193`, so the result is
/// exactly FNV-1a with wrapping `u32` arithmetic, with a code unit (up to 0xFFFF) XORed in
/// where the byte-oriented FNV would XOR a byte.
fn fnv1a_utf16(mut hash: u32, s: &str) -> u32 {
    if s.is_ascii() {
        // An ASCII byte is its own UTF-16 code unit.
        for &byte in s.as_bytes() {
            hash = (hash ^ u32::from(byte)).wrapping_mul(FNV_PRIME);
        }
    } else {
        for unit in s.encode_utf16() {
            hash = (hash ^ u32::from(unit)).wrapping_mul(FNV_PRIME);
        }
    }
    hash
}

/// FNV-1a 32 of the decimal string of `n` (JavaScript's `n + ""` for a `u32`), written to a
/// stack buffer.
fn fnv1a_decimal(n: u32) -> u32 {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    digits[start..].iter().fold(FNV_OFFSET, |hash, &digit| {
        (hash ^ u32::from(digit)).wrapping_mul(FNV_PRIME)
    })
}

/// `(hash % modulus) / modulus` as a double, as the SDK computes it.
fn unit_interval(hash: u32, modulus: u32) -> f64 {
    f64::from(hash % modulus) / f64::from(modulus)
}

/// GrowthBook's `hash(seed, value, version)`: version 1 is `(fnv1a32(value + seed) % 1000) /
/// 1000`, version 2 is `(fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000`; `None` for
/// any other version, as the SDK returns `null`.
pub fn growthbook_hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    match version {
        1 => {
            let hash = fnv1a_utf16(fnv1a_utf16(FNV_OFFSET, value), seed);
            Some(unit_interval(hash, 1000))
        }
        2 => {
            let outer = fnv1a_utf16(fnv1a_utf16(FNV_OFFSET, seed), value);
            Some(unit_interval(fnv1a_decimal(outer), 10_000))
        }
        _ => None,
    }
}

/// GrowthBook's `getBucketRanges(numVariations, coverage, weights)`: each variation's
/// `[start, end)`. Coverage is clamped to `[0, 1]` (NaN counts as 0, which selects the same
/// units as the SDK's NaN ranges: none); weights that are missing, of the wrong length or
/// that do not sum to within 0.99..=1.01 are replaced by equal weights.
pub fn growthbook_bucket_ranges(
    num_variations: usize,
    coverage: f64,
    weights: Option<&[f64]>,
) -> Vec<(f64, f64)> {
    let coverage = if coverage.is_nan() {
        0.0
    } else {
        coverage.clamp(0.0, 1.0)
    };
    let equal = vec![1.0 / num_variations as f64; num_variations];
    let weights = match weights {
        Some(weights) if weights.len() == num_variations => {
            // The SDK sums with `reduce` from 0, left to right.
            let total: f64 = weights.iter().fold(0.0, |sum, w| sum + w);
            if (FRACTION_SUM_MIN..=FRACTION_SUM_MAX).contains(&total) {
                weights
            } else {
                &equal
            }
        }
        _ => &equal,
    };
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|&w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

/// GrowthBook's `chooseVariation(n, ranges)`: the first range with `start <= n < end`;
/// `None` where the SDK returns -1.
pub fn choose_variation(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges
        .iter()
        .position(|&(start, end)| n >= start && n < end)
}

/// MurmurHash3 x86_32 of `key` with `seed` (Austin Appleby's reference, SMHasher
/// verification value 0xB0F57EE3).
pub fn murmur3_x86_32(key: &[u8], seed: u32) -> u32 {
    let mut hasher = Murmur3::new(seed);
    hasher.write(key);
    hasher.finish()
}

/// Optimizely's `_generate_bucket_value(bucketing_id + parent_id)`: MurmurHash3 x86_32 with
/// seed 1 over the UTF-8 bytes of the concatenation, scaled to `[0, 10000)`.
///
/// The SDK computes `floor(hash / 2^32 * 10000)` in doubles; `hash * 10000` is below 2^46, so
/// that is exact and equals the integer `(hash * 10000) >> 32` used here.
pub fn optimizely_bucket(bucketing_id: &str, parent_id: &str) -> u32 {
    let mut hasher = Murmur3::new(OPTIMIZELY_SEED);
    hasher.write(bucketing_id.as_bytes());
    hasher.write(parent_id.as_bytes());
    let hash = hasher.finish();
    ((u64::from(hash) * u64::from(OPTIMIZELY_BUCKETS)) >> 32) as u32
}

/// MurmurHash3 x86_32 over bytes given in pieces, so a concatenation needs no buffer.
struct Murmur3 {
    hash: u32,
    /// Bytes of a block not yet complete.
    tail: [u8; 4],
    tail_len: usize,
    /// Bytes written so far (the reference mixes in the length mod 2^32).
    len: u64,
}

impl Murmur3 {
    fn new(seed: u32) -> Murmur3 {
        Murmur3 {
            hash: seed,
            tail: [0; 4],
            tail_len: 0,
            len: 0,
        }
    }

    fn mix_block(&mut self, block: u32) {
        self.hash ^= scramble(block);
        self.hash = self
            .hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    fn write(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.tail_len > 0 {
            let take = (4 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 4 {
                return;
            }
            self.mix_block(u32::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut blocks = bytes.chunks_exact(4);
        for block in &mut blocks {
            self.mix_block(u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn finish(self) -> u32 {
        let mut hash = self.hash;
        if self.tail_len > 0 {
            let mut last = [0u8; 4];
            last[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            hash ^= scramble(u32::from_le_bytes(last));
        }
        // The reference XORs in its `int len`, i.e. the length mod 2^32.
        hash ^= self.len as u32;
        hash ^= hash >> 16;
        hash = hash.wrapping_mul(0x85eb_ca6b);
        hash ^= hash >> 13;
        hash = hash.wrapping_mul(0xc2b2_ae35);
        hash ^ (hash >> 16)
    }
}

fn scramble(block: u32) -> u32 {
    block
        .wrapping_mul(MURMUR_C1)
        .rotate_left(15)
        .wrapping_mul(MURMUR_C2)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- GrowthBook conformance: the "hash", "getBucketRange" and "chooseVariation"
    // sections of the JavaScript SDK's test/cases.json (spec 0.5.x), which every GrowthBook
    // SDK runs.

    #[test]
    fn growthbook_hash_matches_the_sdk_cases() {
        let cases: &[(&str, &str, u32, Option<f64>)] = &[
            ("", "a", 1, Some(0.22)),
            ("", "b", 1, Some(0.077)),
            ("b", "a", 1, Some(0.946)),
            ("ef", "d", 1, Some(0.652)),
            ("asdf", "8952klfjas09ujk", 1, Some(0.549)),
            ("", "123", 1, Some(0.011)),
            ("", "___)((*\":&", 1, Some(0.563)),
            ("seed", "a", 2, Some(0.0505)),
            ("seed", "b", 2, Some(0.2696)),
            ("foo", "ab", 2, Some(0.2575)),
            ("foo", "def", 2, Some(0.2019)),
            ("89123klj", "8952klfjas09ujkasdf", 2, Some(0.124)),
            ("90850943850283058242805", "123", 2, Some(0.7516)),
            ("()**(%$##$%#$#", "___)((*\":&", 2, Some(0.0128)),
            ("abc", "def", 99, None),
        ];
        for &(seed, value, version, expected) in cases {
            assert_eq!(
                growthbook_hash(seed, value, version),
                expected,
                "{seed:?} {value:?}"
            );
        }
    }

    /// Non-ASCII values (an accent, a combining mark, an astral emoji as a surrogate pair,
    /// CJK, NUL). cases.json has none, so these come from running the SDK's `hashFnv32a` and
    /// `hash` in Node 20: (seed, value, fnv1a32(seed + value), v1, v2).
    #[test]
    fn growthbook_hash_matches_javascript_on_non_ascii() {
        let cases: &[(&str, &str, u32, f64, f64)] = &[
            ("seed", "\u{e9}", 2730975391, 0.137, 0.8663),
            ("seed", "e\u{301}", 1999171550, 0.438, 0.331),
            ("exp", "\u{1f600}", 727017373, 0.655, 0.7506),
            ("exp", "user-\u{1f600}-42", 1616833988, 0.604, 0.7784),
            (
                "checkout_button",
                "\u{dc}n\u{ef}c\u{f6}d\u{e9}-\u{3a9}",
                2545066909,
                0.453,
                0.5019,
            ),
            (
                "checkout_button",
                "\u{7528}\u{6237}12345",
                1646152218,
                0.868,
                0.2431,
            ),
            ("", "\u{0}", 84696351, 0.351, 0.5749),
            ("s\u{e9}ed", "abc", 3244036856, 0.93, 0.1088),
            ("checkout_button", "user_1", 3442118293, 0.523, 0.8208),
            ("checkout_button", "user_2", 3391785436, 0.408, 0.9634),
        ];
        for &(seed, value, fnv, v1, v2) in cases {
            assert_eq!(
                fnv1a_utf16(fnv1a_utf16(FNV_OFFSET, seed), value),
                fnv,
                "{value:?}"
            );
            assert_eq!(growthbook_hash(seed, value, 1), Some(v1), "{value:?}");
            assert_eq!(growthbook_hash(seed, value, 2), Some(v2), "{value:?}");
        }
    }

    #[test]
    fn growthbook_bucket_ranges_match_the_sdk_cases() {
        type Case = (
            &'static str,
            usize,
            f64,
            Option<&'static [f64]>,
            &'static [(f64, f64)],
        );
        let cases: &[Case] = &[
            ("normal 50/50", 2, 1.0, None, &[(0.0, 0.5), (0.5, 1.0)]),
            (
                "reduced coverage",
                2,
                0.5,
                None,
                &[(0.0, 0.25), (0.5, 0.75)],
            ),
            ("zero coverage", 2, 0.0, None, &[(0.0, 0.0), (0.5, 0.5)]),
            (
                "4 variations",
                4,
                1.0,
                None,
                &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
            ),
            (
                "uneven weights",
                2,
                1.0,
                Some(&[0.4, 0.6]),
                &[(0.0, 0.4), (0.4, 1.0)],
            ),
            (
                "uneven weights, 3 variations",
                3,
                1.0,
                Some(&[0.2, 0.3, 0.5]),
                &[(0.0, 0.2), (0.2, 0.5), (0.5, 1.0)],
            ),
            (
                "uneven weights, reduced coverage, 3 variations",
                3,
                0.2,
                Some(&[0.2, 0.3, 0.5]),
                &[(0.0, 0.04), (0.2, 0.26), (0.5, 0.6)],
            ),
            (
                "negative coverage",
                2,
                -0.2,
                None,
                &[(0.0, 0.0), (0.5, 0.5)],
            ),
            ("coverage above 1", 2, 1.5, None, &[(0.0, 0.5), (0.5, 1.0)]),
            (
                "weights sum below 1",
                2,
                1.0,
                Some(&[0.4, 0.1]),
                &[(0.0, 0.5), (0.5, 1.0)],
            ),
            (
                "weights sum above 1",
                2,
                1.0,
                Some(&[0.7, 0.6]),
                &[(0.0, 0.5), (0.5, 1.0)],
            ),
            (
                "weights.length not equal to num variations",
                4,
                1.0,
                Some(&[0.4, 0.4, 0.2]),
                &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
            ),
            (
                "weights sum almost equals 1",
                2,
                1.0,
                Some(&[0.4, 0.5999]),
                &[(0.0, 0.4), (0.4, 0.9999)],
            ),
        ];
        for &(name, n, coverage, weights, expected) in cases {
            let got = growthbook_bucket_ranges(n, coverage, weights);
            assert_eq!(got.len(), expected.len(), "{name}");
            for (g, e) in got.iter().zip(expected) {
                // The SDK's own test rounds too: 0.2 * 0.2 is 0.04000000000000001 in doubles.
                assert!(
                    (g.0 - e.0).abs() < 1e-12 && (g.1 - e.1).abs() < 1e-12,
                    "{name}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn choose_variation_matches_the_sdk_cases() {
        let even: &[(f64, f64)] = &[(0.0, 0.5), (0.5, 1.0)];
        let reduced: &[(f64, f64)] = &[(0.0, 0.25), (0.5, 0.75)];
        let zero: &[(f64, f64)] = &[(0.0, 0.5), (0.5, 0.5), (0.5, 1.0)];
        type Case<'a> = (&'a str, f64, &'a [(f64, f64)], Option<usize>);
        let cases: &[Case] = &[
            ("even range, 0.2", 0.2, even, Some(0)),
            ("even range, 0.4", 0.4, even, Some(0)),
            ("even range, 0.6", 0.6, even, Some(1)),
            ("even range, 0.8", 0.8, even, Some(1)),
            ("even range, 0", 0.0, even, Some(0)),
            ("even range, 0.5", 0.5, even, Some(1)),
            ("reduced range, 0.2", 0.2, reduced, Some(0)),
            ("reduced range, 0.4", 0.4, reduced, None),
            ("reduced range, 0.6", 0.6, reduced, Some(1)),
            ("reduced range, 0.8", 0.8, reduced, None),
            ("reduced range, 0.25", 0.25, reduced, None),
            ("reduced range, 0.5", 0.5, reduced, Some(1)),
            ("zero range", 0.5, zero, Some(2)),
        ];
        for &(name, n, ranges, expected) in cases {
            assert_eq!(choose_variation(n, ranges), expected, "{name}");
        }
    }

    // ---- MurmurHash3 and Optimizely.

    /// SMHasher's verification: hash keys {}, {0}, {0,1}, ... {0..254} with seeds 256 - len,
    /// then hash the concatenated little-endian results with seed 0.
    #[test]
    fn murmur3_passes_the_smhasher_verification() {
        let key: Vec<u8> = (0..=255u8).collect();
        let mut hashes = Vec::with_capacity(4 * 256);
        for len in 0..256 {
            hashes.extend_from_slice(&murmur3_x86_32(&key[..len], 256 - len as u32).to_le_bytes());
        }
        assert_eq!(murmur3_x86_32(&hashes, 0), 0xb0f5_7ee3);
    }

    #[test]
    fn murmur3_matches_published_vectors() {
        let cases: &[(&[u8], u32, u32)] = &[
            (b"", 0, 0),
            (b"", 1, 0x514e_28b7),
            (b"", 0xffff_ffff, 0x81f1_6f39),
            (b"\0\0\0\0", 0, 0x2362_f9de),
            (b"aaaa", 0x9747_b28c, 0x5a97_808a),
            (b"abc", 0, 0xb3dd_93fa),
            (b"abcd", 0, 0x43ed_676a),
            (b"abcde", 0, 0xe89b_9af6),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x9747_b28c,
                0x2fa8_26cd,
            ),
        ];
        for &(key, seed, expected) in cases {
            assert_eq!(
                murmur3_x86_32(key, seed),
                expected,
                "{key:?} seed {seed:#x}"
            );
        }
    }

    #[test]
    fn murmur3_in_pieces_equals_murmur3_in_one() {
        let key: Vec<u8> = (0..40u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        for len in 0..key.len() {
            let whole = murmur3_x86_32(&key[..len], 7);
            for a in 0..=len {
                for b in a..=len {
                    let mut hasher = Murmur3::new(7);
                    hasher.write(&key[..a]);
                    hasher.write(&key[a..b]);
                    hasher.write(&key[b..len]);
                    assert_eq!(hasher.finish(), whole, "len {len} split {a} {b}");
                }
            }
        }
    }

    /// The first five from the Python SDK's `test_bucket_number` (experiment 1886780721 or
    /// 1886780722); the rest computed with Python's `mmh3` 5.x as the SDK computes buckets.
    #[test]
    fn optimizely_bucket_matches_the_sdk() {
        let cases: &[(&str, &str, u32)] = &[
            ("ppid1", "1886780721", 5254),
            ("ppid2", "1886780721", 4299),
            ("ppid2", "1886780722", 2434),
            ("ppid3", "1886780721", 5439),
            (
                "a very very very very very very very very very very very very very very very \
                 long ppd string",
                "1886780721",
                6128,
            ),
            ("\u{e9}", "1886780721", 8892),
            ("\u{1f600}", "1886780721", 1511),
            ("\u{7528}\u{6237}12345", "checkout_button", 7389),
            ("user_1", "checkout_button", 9959),
            ("\u{dc}n\u{ef}c\u{f6}d\u{e9}-\u{3a9}", "42", 7177),
            ("", "1", 6344),
            ("x", "", 187),
        ];
        for &(unit, experiment, expected) in cases {
            assert_eq!(
                optimizely_bucket(unit, experiment),
                expected,
                "{unit:?}{experiment:?}"
            );
        }
    }

    // ---- Arms against straightforward reference implementations.

    /// FNV-1a as the SDK's JavaScript evaluates it: int32 XOR and shifts, the sum in exact
    /// integers (as doubles below 2^53 are), `>>> 0` at the end.
    fn javascript_fnv(s: &str) -> u32 {
        let mut h: i64 = 0x811c_9dc5;
        for unit in s.encode_utf16() {
            let x = (h as i32) ^ i32::from(unit);
            let shl = |k: u32| i64::from(x.wrapping_shl(k));
            h = i64::from(x) + shl(1) + shl(4) + shl(7) + shl(8) + shl(24);
        }
        h as i32 as u32
    }

    fn reference_growthbook(seed: &str, unit: &str, fractions: &[f64]) -> Option<usize> {
        let inner = javascript_fnv(&format!("{seed}{unit}"));
        let n = f64::from(javascript_fnv(&inner.to_string()) % 10_000) / 10_000.0;
        let mut cumulative = 0.0;
        for (i, &w) in fractions.iter().enumerate() {
            let start = cumulative;
            cumulative += w;
            if n >= start && n < start + w {
                return Some(i);
            }
        }
        None
    }

    /// Byte-at-a-time MurmurHash3 x86_32, written from the algorithm's description.
    fn reference_murmur3(key: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        let blocks = key.len() / 4;
        for i in 0..blocks {
            let mut k = u32::from(key[4 * i])
                | u32::from(key[4 * i + 1]) << 8
                | u32::from(key[4 * i + 2]) << 16
                | u32::from(key[4 * i + 3]) << 24;
            k = k
                .wrapping_mul(0xcc9e_2d51)
                .rotate_left(15)
                .wrapping_mul(0x1b87_3593);
            h ^= k;
            h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        }
        let mut k: u32 = 0;
        for (j, &byte) in key[4 * blocks..].iter().enumerate() {
            k ^= u32::from(byte) << (8 * j);
        }
        if !key.len().is_multiple_of(4) {
            h ^= k
                .wrapping_mul(0xcc9e_2d51)
                .rotate_left(15)
                .wrapping_mul(0x1b87_3593);
        }
        h ^= key.len() as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    fn reference_optimizely(seed: &str, unit: &str, ends: &[u32]) -> Option<usize> {
        let hash = reference_murmur3(format!("{unit}{seed}").as_bytes(), 1);
        // As the SDKs compute it, in doubles.
        let bucket = (f64::from(hash) / 4_294_967_296.0 * 10_000.0).floor() as u32;
        ends.iter().position(|&end| bucket < end)
    }

    /// Deterministic synthetic units: ASCII ids of several shapes and non-ASCII ones (Latin-1,
    /// Greek, CJK, emoji outside the BMP).
    fn synthetic_unit(i: u32) -> String {
        const PIECES: [&str; 6] = [
            "\u{e9}",
            "\u{3a9}",
            "\u{7528}\u{6237}",
            "\u{1f600}",
            "\u{df}",
            "-",
        ];
        match i % 4 {
            0 => format!("user_{i}"),
            1 => format!(
                "{:08x}-{:04x}-anon",
                i.wrapping_mul(2_654_435_761),
                i % 65_536
            ),
            2 => i.to_string(),
            _ => {
                let mut s = format!("u{i}");
                s.push_str(PIECES[(i as usize / 4) % PIECES.len()]);
                s.push_str(PIECES[(i as usize / 24) % PIECES.len()]);
                s
            }
        }
    }

    #[test]
    fn growthbook_arms_equal_the_reference_on_100000_units() {
        let arms = Arms::new(
            [("control", 50.0), ("treatment", 30.0), ("other", 20.0)],
            "checkout_button",
            HashKind::GrowthbookV2,
        )
        .unwrap();
        let fractions = [0.5, 0.3, 0.2];
        for i in 0..100_000 {
            let unit = synthetic_unit(i);
            let expected = reference_growthbook("checkout_button", &unit, &fractions);
            assert!(expected.is_some());
            assert_eq!(arms.assign(&unit), expected, "{unit:?}");
        }
    }

    #[test]
    fn murmur3_arms_equal_the_reference_on_100000_units() {
        let arms = Arms::new(
            [("control", 1.0), ("a", 1.0), ("b", 1.0)],
            "1886780721",
            HashKind::Murmur3,
        )
        .unwrap();
        for i in 0..100_000 {
            let unit = synthetic_unit(i);
            let expected = reference_optimizely("1886780721", &unit, &[3333, 6667, 10_000]);
            assert_eq!(arms.assign(&unit), expected, "{unit:?}");
        }
    }

    #[test]
    fn fifty_fifty_splits_within_half_a_percent() {
        for kind in [HashKind::GrowthbookV2, HashKind::Murmur3] {
            let arms = Arms::new(
                [("control", 50.0), ("treatment", 50.0)],
                "checkout_button",
                kind,
            )
            .unwrap();
            let mut counts = [0u32; 2];
            for i in 0..100_000 {
                counts[arms.assign(&synthetic_unit(i)).unwrap()] += 1;
            }
            let share = f64::from(counts[0]) / 100_000.0;
            assert!((share - 0.5).abs() < 0.005, "{kind:?}: {counts:?}");
        }
    }

    // ---- Weights.

    #[test]
    fn fractions_summing_to_about_one_are_used_as_given() {
        let arms = Arms::new([("a", 0.4), ("b", 0.5999)], "s", HashKind::GrowthbookV2).unwrap();
        let Bucketing::Growthbook { ranges, .. } = &arms.bucketing else {
            panic!()
        };
        assert_eq!(
            ranges,
            &growthbook_bucket_ranges(2, 1.0, Some(&[0.4, 0.5999]))
        );
        // A unit hashing to 0.9999 is in no arm, as in the SDK.
        let outside = (0..200_000)
            .map(|i| format!("user_{i}"))
            .find(|u| growthbook_hash("s", u, 2) == Some(0.9999))
            .unwrap();
        assert_eq!(arms.assign(&outside), None);
    }

    #[test]
    fn relative_weights_are_normalised() {
        let arms = Arms::new(
            [("a", 20.0), ("b", 30.0), ("c", 50.0)],
            "s",
            HashKind::GrowthbookV2,
        )
        .unwrap();
        let Bucketing::Growthbook { ranges, .. } = &arms.bucketing else {
            panic!()
        };
        assert_eq!(
            ranges,
            &growthbook_bucket_ranges(3, 1.0, Some(&[0.2, 0.3, 0.5]))
        );
        assert_eq!(arms.weights(), &[20.0, 30.0, 50.0]);
    }

    #[test]
    fn murmur3_ends_are_cumulative_basis_points() {
        let ends = |weights: &[f64]| {
            let arms = Arms::new(
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| (format!("arm{i}"), w)),
                "1",
                HashKind::Murmur3,
            )
            .unwrap();
            match arms.bucketing {
                Bucketing::Murmur3 { ends } => ends,
                Bucketing::Growthbook { .. } => unreachable!(),
            }
        };
        assert_eq!(ends(&[50.0, 50.0]), [5000, 10_000]);
        assert_eq!(ends(&[1.0, 1.0, 1.0]), [3333, 6667, 10_000]);
        assert_eq!(ends(&[33.33, 33.33, 33.34]), [3333, 6666, 10_000]);
        assert_eq!(ends(&[0.1, 0.9]), [1000, 10_000]);
    }

    #[test]
    fn invalid_arms_are_refused() {
        let gb = HashKind::GrowthbookV2;
        assert_eq!(
            Arms::new(Vec::<(String, f64)>::new(), "s", gb),
            Err(Error::NoArms)
        );
        assert_eq!(
            Arms::new([("a", 1.0), ("a", 1.0)], "s", gb),
            Err(Error::DuplicateArm { name: "a".into() })
        );
        assert_eq!(
            Arms::new([("a", 1.0), ("", 1.0)], "s", gb),
            Err(Error::EmptyName { index: 1 })
        );
        for weight in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(
                Arms::new([("a", 1.0), ("b", weight)], "s", gb),
                Err(Error::Weight {
                    name: "b".into(),
                    weight
                })
            );
        }
        assert!(matches!(
            Arms::new([("a", f64::NAN)], "s", gb),
            Err(Error::Weight { weight, .. }) if weight.is_nan()
        ));
        assert_eq!(
            Arms::new([("a", f64::MAX), ("b", f64::MAX)], "s", gb),
            Err(Error::WeightSum { sum: f64::INFINITY })
        );
        let many = (0..=ARMS_MAX).map(|i| (i.to_string(), 1.0));
        assert_eq!(
            Arms::new(many, "s", gb),
            Err(Error::TooManyArms {
                count: ARMS_MAX + 1,
                max: ARMS_MAX
            })
        );
    }

    #[test]
    fn hash_kind_names_round_trip() {
        for kind in [HashKind::GrowthbookV2, HashKind::Murmur3] {
            assert_eq!(HashKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(HashKind::from_name("md5"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_unit_gets_an_arm_under_relative_weights(unit in ".*", seed in ".{0,20}") {
            for kind in [HashKind::GrowthbookV2, HashKind::Murmur3] {
                let arms = Arms::new([("control", 50.0), ("treatment", 50.0)], &seed, kind);
                let arms = arms.unwrap();
                let arm = arms.assign(&unit);
                proptest::prop_assert!(arm.is_some());
                proptest::prop_assert_eq!(arm, arms.clone().assign(&unit));
            }
        }
    }
}
