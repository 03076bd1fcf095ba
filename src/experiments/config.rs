//! `[[experiment]]` tables: as written ([`ExperimentConfig`]) and compiled against the
//! listeners ([`Experiment`]). A table that does not hold is an [`ExperimentError`] naming
//! the key it is about, so the configuration loader can name its line.

#![forbid(unsafe_code)]

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Arms, HashKind};
use crate::parse::Format;

/// Most `[[experiment]]` tables.
pub const EXPERIMENTS_MAX: usize = 64;

/// The arm of events without the unit field.
pub const NO_ARM: &str = "none";

/// One `[[experiment]]` table, as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Unique name: rows carry it as `"experiment"`.
    pub name: String,
    /// The listener whose events are split.
    pub listener: String,
    /// The field holding the unit (user id): a `json` path or a `logfmt` name.
    pub unit: String,
    /// Arms and their weights, in order: the first is the control.
    #[serde(deserialize_with = "ordered_arms", serialize_with = "arms_table")]
    pub arms: Vec<(String, f64)>,
    /// The hash seed (GrowthBook) or experiment id (Optimizely); default: the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// `growthbook-v2` (default) or `murmur3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// The arms table in the order it was written (TOML tables keep it for the deserializer).
fn ordered_arms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<(String, f64)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table of arm names and weights, like { control = 50, treatment = 50 }")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut arms = Vec::new();
            while let Some((name, weight)) = map.next_entry::<String, f64>()? {
                arms.push((name, weight));
            }
            Ok(arms)
        }
    }
    d.deserialize_map(Visitor)
}

fn arms_table<S: Serializer>(arms: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(arms.len()))?;
    for (name, weight) in arms {
        m.serialize_entry(name, weight)?;
    }
    m.end()
}

/// A table that does not hold, and the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentError {
    /// The key (`arms`, `listener`, ...), or `name` for the table as a whole.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(key: &'static str, message: impl Into<String>) -> ExperimentError {
    ExperimentError {
        key,
        message: message.into(),
    }
}

/// A compiled experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Its name.
    pub name: String,
    /// Index of its listener among the configured listeners.
    pub listener: usize,
    /// The unit field.
    pub unit: String,
    /// The arms and how units are bucketed.
    pub arms: Arms,
}

/// True when `name` can be an arm: a tag value of a key (`KEY;arm=NAME`).
fn is_arm_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl Experiment {
    /// Compiles `c` against the listeners (name, format) configured.
    pub fn compile(
        c: &ExperimentConfig,
        listeners: &[(&str, Format)],
    ) -> Result<Experiment, ExperimentError> {
        if c.name.is_empty() {
            return Err(error("name", "an experiment needs a `name`"));
        }
        let Some(listener) = listeners.iter().position(|(n, _)| *n == c.listener) else {
            let names: Vec<&str> = listeners.iter().map(|(n, _)| *n).collect();
            return Err(error(
                "listener",
                format!(
                    "listener = \"{}\" is not a configured listener ({})",
                    c.listener,
                    names.join(", ")
                ),
            ));
        };
        let format = listeners[listener].1;
        if !matches!(format, Format::Json | Format::Logfmt) {
            return Err(error(
                "listener",
                format!(
                    "listener `{}` reads {}, whose lines have no fields to take a unit from \
                     (experiments split json and logfmt listeners)",
                    c.listener,
                    format.as_str()
                ),
            ));
        }
        if c.unit.is_empty() {
            return Err(error(
                "unit",
                "unit = \"\": name the field that holds the unit",
            ));
        }
        if c.arms.len() < 2 {
            return Err(error("arms", "an experiment needs at least two arms"));
        }
        for (name, _) in &c.arms {
            if !is_arm_name(name) || name == NO_ARM {
                return Err(error(
                    "arms",
                    format!(
                        "arm `{name}`: an arm is named with letters, digits, `_`, `-` and `.`, \
                         and `{NO_ARM}` is the arm of events without the unit"
                    ),
                ));
            }
        }
        let sum: f64 = c.arms.iter().map(|(_, w)| *w).sum();
        let adds_up = |target: f64| (sum - target).abs() <= 1e-9 * target;
        if !(adds_up(100.0) || adds_up(1.0)) {
            return Err(error(
                "arms",
                format!(
                    "the arm weights add up to {sum}: give percentages that add up to 100 (or \
                     fractions that add up to 1)"
                ),
            ));
        }
        let kind = match c.hash.as_deref() {
            None | Some("growthbook-v2") => HashKind::GrowthbookV2,
            Some("murmur3") => HashKind::Murmur3,
            Some(other) => {
                return Err(error(
                    "hash",
                    format!("hash = \"{other}\": use \"growthbook-v2\" or \"murmur3\""),
                ));
            }
        };
        let seed = c.seed.as_deref().unwrap_or(&c.name);
        let arms = Arms::new(c.arms.iter().cloned(), seed, kind)
            .map_err(|e| error("arms", e.to_string()))?;
        Ok(Experiment {
            name: c.name.clone(),
            listener,
            unit: c.unit.clone(),
            arms,
        })
    }
}

/// Compiles every experiment, checking what relates them: unique names, one experiment per
/// listener, and arm names no two experiments share (an arm tags its keys, `KEY;arm=NAME`,
/// so the arm names which experiment a key is of). An error gives the table's index.
pub fn compile_all(
    configs: &[ExperimentConfig],
    listeners: &[(&str, Format)],
) -> Result<Vec<Experiment>, (usize, ExperimentError)> {
    let mut out: Vec<Experiment> = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter().enumerate() {
        if i >= EXPERIMENTS_MAX {
            return Err((
                i,
                error("name", format!("at most {EXPERIMENTS_MAX} experiments")),
            ));
        }
        let e = Experiment::compile(c, listeners).map_err(|e| (i, e))?;
        for other in &out {
            if other.name == e.name {
                return Err((
                    i,
                    error("name", format!("another experiment is named `{}`", e.name)),
                ));
            }
            if other.listener == e.listener {
                return Err((
                    i,
                    error(
                        "listener",
                        format!(
                            "experiment `{}` already splits listener `{}`",
                            other.name, c.listener
                        ),
                    ),
                ));
            }
            if let Some(arm) = e
                .arms
                .names()
                .iter()
                .find(|a| other.arms.index_of(a).is_some())
            {
                return Err((
                    i,
                    error(
                        "arms",
                        format!(
                            "arm `{arm}` is also an arm of experiment `{}`: arms tag keys \
                             (`KEY;arm={arm}`), so experiments name their arms apart \
                             (`{}_{arm}`)",
                            other.name, e.name
                        ),
                    ),
                ));
            }
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ExperimentConfig {
        toml::from_str(text).unwrap()
    }

    const LISTENERS: [(&str, Format); 2] = [("events", Format::Json), ("g", Format::Graphite)];

    #[test]
    fn arms_keep_the_order_they_are_written_in() {
        let c = config(
            "name = \"x\"\nlistener = \"events\"\nunit = \"user\"\narms = { zeta = 10, alpha = 40, mid = 50 }\n",
        );
        let names: Vec<&str> = c.arms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "mid"]);
        let e = Experiment::compile(&c, &LISTENERS).unwrap();
        assert_eq!(e.arms.names(), ["zeta", "alpha", "mid"]);
        assert_eq!(e.arms.seed(), "x", "the seed defaults to the name");
    }

    #[test]
    fn bad_experiments_are_refused_naming_the_key() {
        let base = "name = \"x\"\nunit = \"user\"\n";
        let cases = [
            (
                "listener = \"nope\"\narms = { a = 50, b = 50 }",
                "listener",
                "not a configured",
            ),
            (
                "listener = \"g\"\narms = { a = 50, b = 50 }",
                "listener",
                "no fields",
            ),
            (
                "listener = \"events\"\narms = { a = 50, b = 40 }",
                "arms",
                "add up to 90",
            ),
            (
                "listener = \"events\"\narms = { a = 100 }",
                "arms",
                "at least two",
            ),
            (
                "listener = \"events\"\narms = { none = 50, b = 50 }",
                "arms",
                "without the unit",
            ),
            (
                "listener = \"events\"\narms = { \"a;b\" = 50, b = 50 }",
                "arms",
                "letters",
            ),
            (
                "listener = \"events\"\narms = { a = 50, b = 50 }\nhash = \"md5\"",
                "hash",
                "murmur3",
            ),
        ];
        for (text, key, message) in cases {
            let c = config(&format!("{base}{text}"));
            let e = Experiment::compile(&c, &LISTENERS).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e:?}");
            assert!(e.message.contains(message), "{text}: {e:?}");
        }
        let fractions = config(&format!(
            "{base}listener = \"events\"\narms = {{ a = 0.5, b = 0.5 }}"
        ));
        assert!(Experiment::compile(&fractions, &LISTENERS).is_ok());
    }

    #[test]
    fn experiments_name_their_arms_apart_and_split_a_listener_once() {
        let listeners = [("a", Format::Json), ("b", Format::Logfmt)];
        let one =
            config("name = \"one\"\nlistener = \"a\"\nunit = \"u\"\narms = { c1 = 50, t1 = 50 }");
        let same_arm =
            config("name = \"two\"\nlistener = \"b\"\nunit = \"u\"\narms = { c1 = 50, t2 = 50 }");
        let same_listener =
            config("name = \"two\"\nlistener = \"a\"\nunit = \"u\"\narms = { c2 = 50, t2 = 50 }");
        let fine =
            config("name = \"two\"\nlistener = \"b\"\nunit = \"u\"\narms = { c2 = 50, t2 = 50 }");
        let err = compile_all(&[one.clone(), same_arm], &listeners).unwrap_err();
        assert_eq!((err.0, err.1.key), (1, "arms"));
        let err = compile_all(&[one.clone(), same_listener], &listeners).unwrap_err();
        assert_eq!((err.0, err.1.key), (1, "listener"));
        assert_eq!(compile_all(&[one, fine], &listeners).unwrap().len(), 2);
    }
}
