//! Compile-fail (trybuild) tests of dtx's macros: the cases are in `cases/`, run by `tests/ui.rs`.
