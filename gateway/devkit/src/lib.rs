//! The development kit of Tongban: what the demo and the tests need and a production node
//! does not — a dev PKI (`certs init`), a dev identity provider per city, and a whole
//! federation (nodes and reference providers) on loopback.
//!
//! The node library (`tongban-gateway`) does not depend on this crate, nor on any domain
//! service: the `tongban` binary and the tests wire them together.

pub mod bundles;
pub mod certs;
pub mod demo;
pub mod departments;
pub mod etcd;
pub mod idp;
pub mod local;
pub mod medical;
pub mod netns;
pub mod oidc;
pub mod portal;
pub mod probe;
