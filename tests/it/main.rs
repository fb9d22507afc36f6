//! The one integration-test binary: one module per area (plain list of `mod` lines).

mod backend;
mod support;
