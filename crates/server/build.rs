//! Generates the gRPC code from `proto/inference.proto` with a pure-Rust protobuf compiler
//! (protox), so a fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let descriptors = protox::compile(["inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // The client is only for the benchmark load generator (bench/tools), which turns on the
        // `grpc-client` feature; the server does not need it.
        .build_client(std::env::var_os("CARGO_FEATURE_GRPC_CLIENT").is_some())
        .build_server(true)
        // `bytes` fields (raw_input_contents, ...) decode as `bytes::Bytes`: no copy out of the
        // received message.
        .bytes(".")
        // prost's codec, with the server's admission check in front of inference messages
        // (src/api/grpc/admission.rs).
        .codec_path("crate::api::grpc::AdmissionCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
