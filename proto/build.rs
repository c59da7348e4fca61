//! Compiles the .proto files with protox (pure Rust), so building needs no
//! system `protoc`.

fn main() {
    let protos = ["terminal.proto", "cmdop_ext.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."]).expect("proto files compile");
    write_method_paths(&fds);
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(fds)
        .expect("code generation");
}

/// Writes `methods.rs`: every RPC's path (`/package.Service/Method`), so the
/// control plane's metrics label calls by method from a fixed list.
fn write_method_paths(fds: &prost_types::FileDescriptorSet) {
    let mut paths = Vec::new();
    for file in &fds.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths.sort();
    let mut out = String::from("/// Every RPC of our .proto files, by path, sorted.\npub const METHOD_PATHS: &[&str] = &[\n");
    for p in &paths {
        out.push_str(&format!("    {p:?},\n"));
    }
    out.push_str("];\n");
    let dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(std::path::Path::new(&dir).join("methods.rs"), out).expect("write methods.rs");
}
