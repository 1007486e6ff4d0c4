//! driftwatch agent library.
