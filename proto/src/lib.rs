//! Generated Tongban protos, shared by nodes, providers and clients.
//!
//! Domain types live in the crates that use them; these are wire types only.

#![allow(clippy::all, clippy::pedantic)]

pub mod metadata;

/// The file descriptor set of every Tongban proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tongban_descriptor.bin"));

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("tongban.registry.v1");
    }
}

pub mod federation {
    pub mod v1 {
        tonic::include_proto!("tongban.federation.v1");
    }
}

pub mod crosscity {
    pub mod v1 {
        tonic::include_proto!("tongban.crosscity.v1");
    }
}

pub mod consent {
    pub mod v1 {
        tonic::include_proto!("tongban.consent.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("tongban.audit.v1");
    }
}
