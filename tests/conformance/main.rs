//! The conformance suite: one set of cases (`cases.rs`), run against every backend
//! this build includes. A backend joins with one module calling `conformance_cases!`.

#[macro_use]
mod cases;
mod support;

/// The embedded broker, on every `cargo test`.
mod memory {
    conformance_cases!(crate::support::Target::memory());
}
