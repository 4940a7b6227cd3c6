//! Generated Tongban protos, shared by nodes, providers and clients.
//!
//! Domain types live in the crates that use them; these are wire types only.

#![allow(clippy::all, clippy::pedantic)]

pub mod h2;
pub mod metadata;

/// The file descriptor set of every Tongban proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tongban_descriptor.bin"));

/// `pub mod <name> { pub mod v1 { <the generated code of package tongban.<name>.v1> } }`.
macro_rules! protos {
    ($($name:ident => $package:literal),* $(,)?) => {
        $(pub mod $name {
            pub mod v1 {
                tonic::include_proto!($package);
            }
        })*
    };
}

protos! {
    registry => "tongban.registry.v1",
    federation => "tongban.federation.v1",
    consent => "tongban.consent.v1",
    audit => "tongban.audit.v1",
    medical => "tongban.medical.v1",
    admin => "tongban.admin.v1",
    bundle => "tongban.bundle.v1",
}

/// The cross-city services: v2 is the service departments run (the 27 items); v1 is its
/// first, rule-less form, kept for compatibility.
pub mod crosscity {
    pub mod v1 {
        tonic::include_proto!("tongban.crosscity.v1");
    }
    pub mod v2 {
        tonic::include_proto!("tongban.crosscity.v2");
    }
}
