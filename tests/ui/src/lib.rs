//! Compile-fail (trybuild) tests of dtx's derive macros: the cases are in `cases/`, run by `tests/ui.rs`.
