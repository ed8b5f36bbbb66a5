//! Generates the gRPC messages and service traits from xAI's schema as the official SDK ships it
//! (`proto/xai-sdk-1.21.0.binpb`, a FileDescriptorSet vendored by `scripts/vendor-xai-protos`):
//! no `protoc` is needed.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "proto/xai-sdk-1.21.0.binpb";
    println!("cargo:rerun-if-changed={path}");
    let bytes = std::fs::read(path)?;
    let descriptors = prost_types::FileDescriptorSet::decode(bytes.as_slice())?;
    // The client is for the benchmark (feature `client`); the server never needs it.
    let client = std::env::var_os("CARGO_FEATURE_CLIENT").is_some();
    tonic_prost_build::configure()
        .build_client(client)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
