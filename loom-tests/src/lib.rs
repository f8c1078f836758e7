//! Helpers for the loom suite in `tests/`; see `docs/invariants.md`.
//!
//! Everything here exists only under `--cfg loom`:
//! `RUSTFLAGS="--cfg loom" cargo test --release` at the workspace root.
