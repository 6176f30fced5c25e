//! End-to-end tests of pgcorral; they live in the top-level `tests/` directory.
