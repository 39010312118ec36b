//! Mapping JSON keys to model feature indices by name.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How a model names its features: a pattern with `{i}` (`"feature_{i}"`) or an explicit list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureNames {
    /// Feature i is named by replacing `{i}` in the pattern with i in decimal.
    Pattern(String),
    /// Feature i is named `names[i]`.
    List(Vec<String>),
}

impl Default for FeatureNames {
    fn default() -> Self {
        FeatureNames::Pattern("feature_{i}".to_string())
    }
}

/// Resolves feature names to indices for a fixed number of features.
///
/// The pattern form is resolved arithmetically, so decoding a 25,000-key frame builds no
/// map of strings; the list form uses one map built at start-up.
#[derive(Clone, Debug)]
pub struct FeatureIndex {
    n: usize,
    kind: IndexKind,
}

#[derive(Clone, Debug)]
enum IndexKind {
    Pattern {
        prefix: String,
        suffix: String,
    },
    List {
        names: Vec<String>,
        by_name: HashMap<String, usize>,
    },
}

impl FeatureIndex {
    /// Builds the index for `n` features; fails when the names do not fit `n`.
    pub fn new(names: &FeatureNames, n: usize) -> Result<Self, String> {
        let kind = match names {
            FeatureNames::Pattern(p) => {
                let (prefix, suffix) = p
                    .split_once("{i}")
                    .ok_or_else(|| format!("feature name pattern {p:?} has no {{i}}"))?;
                IndexKind::Pattern {
                    prefix: prefix.to_string(),
                    suffix: suffix.to_string(),
                }
            }
            FeatureNames::List(list) => {
                if list.len() != n {
                    return Err(format!(
                        "{} feature names listed for {} features",
                        list.len(),
                        n
                    ));
                }
                let mut by_name = HashMap::with_capacity(n);
                for (i, name) in list.iter().enumerate() {
                    if by_name.insert(name.clone(), i).is_some() {
                        return Err(format!("feature name {name:?} is listed twice"));
                    }
                }
                IndexKind::List {
                    names: list.clone(),
                    by_name,
                }
            }
        };
        Ok(FeatureIndex { n, kind })
    }

    /// The default `feature_{i}` naming for `n` features.
    pub fn numbered(n: usize) -> Self {
        FeatureIndex::new(&FeatureNames::default(), n).expect("default pattern is valid")
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no features.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether `name` is exactly the name of feature `i` (the fast path of a decoder that
    /// expects keys in model order).
    #[inline]
    pub fn is_name_of(&self, name: &str, i: usize) -> bool {
        match &self.kind {
            IndexKind::Pattern { prefix, suffix } => {
                let Some(rest) = name.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                let Some(digits) = rest.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                parse_index(digits) == Some(i)
            }
            IndexKind::List { names, .. } => names.get(i).is_some_and(|n| n == name),
        }
    }

    /// The pattern's text before and after `{i}` (`("feature_", "")` for the default
    /// naming), or `None` when names are listed. A decoder that expects keys in model
    /// order can then check a key against its position without building the name.
    pub fn pattern_parts(&self) -> Option<(&str, &str)> {
        match &self.kind {
            IndexKind::Pattern { prefix, suffix } => Some((prefix, suffix)),
            IndexKind::List { .. } => None,
        }
    }

    /// The index of the feature called `name`, if the model has one.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        match &self.kind {
            IndexKind::Pattern { prefix, suffix } => {
                let digits = name
                    .strip_prefix(prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                parse_index(digits).filter(|&i| i < self.n)
            }
            IndexKind::List { by_name, .. } => by_name.get(name).copied(),
        }
    }

    /// The name of feature `i`.
    pub fn name(&self, i: usize) -> String {
        match &self.kind {
            IndexKind::Pattern { prefix, suffix } => format!("{prefix}{i}{suffix}"),
            IndexKind::List { names, .. } => names[i].clone(),
        }
    }
}

/// Canonical decimal only ("7", not "07" or "+7"), so each feature has exactly one name.
fn parse_index(digits: &str) -> Option<usize> {
    let bytes = digits.as_bytes();
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_resolves_canonical_names_only() {
        let idx = FeatureIndex::numbered(100);
        assert_eq!(idx.index_of("feature_0"), Some(0));
        assert_eq!(idx.index_of("feature_99"), Some(99));
        assert_eq!(idx.index_of("feature_100"), None);
        assert_eq!(idx.index_of("feature_07"), None);
        assert_eq!(idx.index_of("feature_"), None);
        assert_eq!(idx.index_of("sensor_1"), None);
        assert!(idx.is_name_of("feature_42", 42));
        assert!(!idx.is_name_of("feature_42", 41));
        assert_eq!(idx.name(5), "feature_5");
        assert_eq!(idx.pattern_parts(), Some(("feature_", "")));
        let idx = FeatureIndex::new(&FeatureNames::Pattern("s{i}.v".into()), 3).unwrap();
        assert_eq!(idx.pattern_parts(), Some(("s", ".v")));
    }

    #[test]
    fn list_resolves_and_rejects_duplicates() {
        let idx = FeatureIndex::new(&FeatureNames::List(vec!["a".into(), "b".into()]), 2).unwrap();
        assert_eq!(idx.index_of("b"), Some(1));
        assert_eq!(idx.index_of("c"), None);
        assert_eq!(idx.pattern_parts(), None);
        assert!(FeatureIndex::new(&FeatureNames::List(vec!["a".into(), "a".into()]), 2).is_err());
        assert!(FeatureIndex::new(&FeatureNames::List(vec!["a".into()]), 2).is_err());
    }
}
