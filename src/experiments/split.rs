//! The ingest side of an experiment: each event of the experiment's listener gets its arm as
//! a key tag (`KEY;arm=NAME`, or `KEY;arm=none` without the unit field) and the hash of its
//! unit, which the windows count in `distinct`. Routing sends the tagged key to the owner
//! of `KEY`, so every arm of a key meets on one shard.
//!
//! Per event: one hash of the unit for its arm (no allocation: see [`super::Arms::assign`])
//! and one of its bytes for `distinct`; the tagged key is built in a buffer reused for every
//! event.

#![forbid(unsafe_code)]

use super::Arms;
use super::config::{Experiment, NO_ARM};

/// One listener's split.
#[derive(Debug, Clone)]
pub struct Split {
    arms: Arms,
    /// `;arm=NAME` of each arm, then `;arm=none`.
    tags: Vec<Vec<u8>>,
    key: Vec<u8>,
}

/// The hash of a unit for `distinct`: never 0 (0 means "no unit").
#[inline]
pub fn unit_hash(unit: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(unit).max(1)
}

impl Split {
    /// The split of `experiment`.
    pub fn new(experiment: &Experiment) -> Split {
        let mut tags: Vec<Vec<u8>> = experiment
            .arms
            .names()
            .iter()
            .map(|n| format!(";arm={n}").into_bytes())
            .collect();
        tags.push(format!(";arm={NO_ARM}").into_bytes());
        Split {
            arms: experiment.arms.clone(),
            tags,
            key: Vec::with_capacity(256),
        }
    }

    /// The arm's key of `key` for an event whose unit is `unit`, and the unit's hash (0
    /// when it has none). A unit that is not UTF-8, or that no arm takes, is `none`.
    #[inline]
    pub fn tag(&mut self, key: &[u8], unit: Option<&[u8]>) -> (&[u8], u64) {
        let (arm, hash) = match unit {
            Some(u) => {
                let arm = std::str::from_utf8(u)
                    .ok()
                    .and_then(|s| self.arms.assign(s));
                (arm, unit_hash(u))
            }
            None => (None, 0),
        };
        let tag = &self.tags[arm.unwrap_or(self.tags.len() - 1)];
        self.key.clear();
        self.key.extend_from_slice(key);
        self.key.extend_from_slice(tag);
        (&self.key, hash)
    }
}

/// Splits `key` (`BASE;arm=NAME`) into its base and arm name, when it has an arm tag last.
#[inline]
pub fn arm_of(key: &str) -> Option<(&str, &str)> {
    let at = key.rfind(";arm=")?;
    let arm = &key[at + ";arm=".len()..];
    (!arm.is_empty() && !arm.contains(';')).then(|| (&key[..at], arm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::config::{Experiment, ExperimentConfig};
    use crate::parse::Format;

    #[test]
    fn events_get_their_arm_as_a_tag_and_their_unit_hashed() {
        let c: ExperimentConfig = toml::from_str(
            "name = \"checkout\"\nlistener = \"e\"\nunit = \"user\"\narms = { control = 50, treatment = 50 }",
        )
        .unwrap();
        let e = Experiment::compile(&c, &[("e", Format::Json)]).unwrap();
        let mut split = Split::new(&e);
        let arm = e.arms.assign("user-1").unwrap();
        let (key, hash) = split.tag(b"checkout.click", Some(b"user-1"));
        assert_eq!(
            key,
            format!("checkout.click;arm={}", e.arms.names()[arm]).as_bytes()
        );
        assert_eq!(hash, unit_hash(b"user-1"));
        let (key, hash) = split.tag(b"checkout.click", None);
        assert_eq!(key, b"checkout.click;arm=none");
        assert_eq!(hash, 0);
        assert_eq!(
            arm_of("checkout.click;arm=treatment"),
            Some(("checkout.click", "treatment"))
        );
        assert_eq!(arm_of("a;arm=b;c=d"), None);
        assert_eq!(arm_of("plain"), None);
    }
}
