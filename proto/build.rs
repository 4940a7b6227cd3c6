//! Compiles every `.proto` under `tongban/` with protox (pure Rust, no system `protoc`) and
//! writes the file descriptor set next to the generated code so that nodes can serve
//! reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "tongban/registry/v1/registry.proto",
    "tongban/federation/v1/federation.proto",
    "tongban/crosscity/v1/crosscity.proto",
    "tongban/crosscity/v2/crosscity.proto",
    "tongban/medical/v1/medical.proto",
    "tongban/consent/v1/consent.proto",
    "tongban/audit/v1/audit.proto",
    "tongban/admin/v1/admin.proto",
    "tongban/bundle/v1/bundle.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("tongban_descriptor.bin"), bytes)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
