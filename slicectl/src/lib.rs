//! `slicectl`: see docs/ARCHITECTURE.md. This crate is filled by its own issue; it has no code yet.
