//! Compiles the .proto files with protox (pure Rust), so building needs no
//! system `protoc`.

fn main() {
    let protos = ["terminal.proto", "cmdop_ext.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."]).expect("proto files compile");
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(fds)
        .expect("code generation");
}
