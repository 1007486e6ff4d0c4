//! The definition of `drift_pct`.
//!
//! `drift_pct` is the share of a host's observed items that deviate from its
//! image, as a percentage in `[0, 100]`:
//!
//! ```text
//! drift_pct = 100 × deviating / observed
//! ```
//!
//! - An *item* is one file-system path or one installed package (keyed by
//!   manager, name and architecture).
//! - *observed* counts every item present in the manifest **or** on the host,
//!   outside excluded paths: the union of both sides. Using the union (not
//!   just the manifest) keeps the figure within 100 even when more is added
//!   than the image ever had. Items in runtime zones are observed but never
//!   deviating: their changes are expected.
//! - *deviating* counts the items with at least one deviation (added,
//!   removed, content, metadata, or a package added, removed or changed).
//!   A path that changed both content and mode counts once.
//! - Items that could not be verified (unreadable, vanished) stay in
//!   *observed* but cannot be *deviating*; coverage reports them separately.
//! - A host with nothing observed has 0% drift.
//!
//! The agent computes it per scan; the collector reuses this function so the
//! fleet view never disagrees with the agent.

/// The two counts `drift_pct` is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriftCounts {
    /// Items with at least one deviation.
    pub deviating: u64,
    /// Items in the manifest or on the host (their union).
    pub observed: u64,
}

impl DriftCounts {
    /// See the module documentation for the definition.
    pub fn pct(self) -> f64 {
        drift_pct(self.deviating, self.observed)
    }
}

/// `100 × deviating / observed`, clamped to `[0, 100]`; 0 when nothing was
/// observed.
pub fn drift_pct(deviating: u64, observed: u64) -> f64 {
    if observed == 0 {
        return 0.0;
    }
    let pct = 100.0 * deviating.min(observed) as f64 / observed as f64;
    pct.clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_observed_is_no_drift() {
        assert_eq!(drift_pct(0, 0), 0.0);
    }

    #[test]
    fn pct_is_share_of_observed() {
        assert_eq!(drift_pct(1, 4), 25.0);
        assert_eq!(drift_pct(4, 4), 100.0);
        assert_eq!(
            DriftCounts {
                deviating: 1,
                observed: 1000
            }
            .pct(),
            0.1
        );
    }

    #[test]
    fn never_exceeds_hundred() {
        assert_eq!(drift_pct(10, 4), 100.0);
    }
}
