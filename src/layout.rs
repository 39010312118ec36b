//! Which worker owns which features.

use std::ops::Range;

/// Contiguous split of `n_features` over `parts` partitions; partition i is owned by
/// worker i, so the Exchange key of a slice is its partition number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of model features.
    pub n_features: usize,
    /// Number of partitions (timely peers: threads x processes).
    pub parts: usize,
}

impl Layout {
    /// A layout of `n_features` over `parts` partitions (at least one).
    pub fn new(n_features: usize, parts: usize) -> Self {
        Layout {
            n_features,
            parts: parts.max(1),
        }
    }

    /// The features partition `part` owns; sizes differ by at most one.
    pub fn range(&self, part: usize) -> Range<usize> {
        let lo = part * self.n_features / self.parts;
        let hi = (part + 1) * self.n_features / self.parts;
        lo..hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_feature_once() {
        for (n, p) in [(25_000, 1), (25_000, 3), (7, 4), (3, 5)] {
            let layout = Layout::new(n, p);
            let mut next = 0;
            for part in 0..p {
                let r = layout.range(part);
                assert_eq!(r.start, next);
                assert!(r.len() + 1 >= n / p);
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }
}
