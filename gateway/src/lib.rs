//! The Tongban node library: a gRPC gateway that federates city governments' service
//! registries and routes calls across the administrative boundary over mutual TLS. It
//! depends on no domain service; the `tongban` binary (`gateway/cli`) wires it, and the dev
//! kit (`gateway/devkit`) runs whole federations of it for the demo and the tests.
//!
//! One module, one job. [`proxy`] reads as the path of one call (DESIGN §2); [`error`] is the
//! one error vocabulary; [`store`] is the storage seam; the README's "Architecture" section
//! walks one call through the modules.

pub mod admin;
pub mod assertion;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod consent;
pub mod error;
pub mod federation;
pub mod grpc;
pub mod jwks_fetch;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod registry_api;
pub mod replicas;
pub mod server;
pub mod stats;
pub mod status_api;
pub mod store;
pub mod subject;
pub mod trust;
pub mod upstream;
pub mod verified;
pub mod web;

pub use config::NodeConfig;
pub use node::{Listeners, NodeError, PreparedNode, RunningNode};
