//! The redis backend. Its config is always compiled, so a config file naming this
//! broker is validated even in builds without the `redis` feature; the client
//! itself is built only with that feature.

pub mod config;
