//! Generates `include/cmdop.h` from the C boundary in `src/ffi` with
//! cbindgen, rewriting the file only when its content changes (so that
//! builds do not touch the committed header needlessly).

use std::path::PathBuf;

fn main() {
    // cbindgen reads the whole crate (a constant or type of src/client can
    // reach the header), so any change under src/ regenerates it.
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");
    emit_soname();

    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let config = match cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")) {
        Ok(c) => c,
        Err(e) => panic!("cbindgen.toml is invalid: {e}"),
    };
    let bindings = match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(b) => b,
        Err(e) => {
            // Keep the committed header; the compiler reports the real error.
            println!("cargo:warning=include/cmdop.h not regenerated: {e}");
            return;
        }
    };
    let header = crate_dir.join("include").join("cmdop.h");
    if let Some(dir) = header.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
    }
    // `write_to_file` compares with the existing content and writes only on change.
    bindings.write_to_file(&header);
}

/// Gives the shared library the soname `libcmdop.so.<MAJOR>` on ELF
/// targets, so that programs link against the ABI version and `make
/// install` can lay out the usual `.so.X.Y.Z` / `.so.X` / `.so` symlinks.
/// Policy (packaging/README.md): the package's major version is
/// CMDOP_ABI_VERSION; a unit test in src/ffi/version.rs holds them equal.
fn emit_soname() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if !matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        return;
    }
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".to_owned());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcmdop.so.{major}");
    link_soname_in_build_tree(&major);
}

/// A program linked with `-Ltarget/debug -lcmdop` asks the loader for the
/// soname, `libcmdop.so.<MAJOR>`, which cargo does not write: put that
/// name beside the library as a symlink to `libcmdop.so` (dangling until
/// cargo links it, moments later). The profile directory is three levels
/// above OUT_DIR (`<profile>/build/<pkg>-<hash>/out`).
fn link_soname_in_build_tree(major: &str) {
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        return;
    };
    let link = profile_dir.join(format!("libcmdop.so.{major}"));
    if std::fs::read_link(&link).is_ok_and(|target| target == std::path::Path::new("libcmdop.so")) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    if let Err(e) = std::os::unix::fs::symlink("libcmdop.so", &link) {
        println!("cargo:warning=cannot create {}: {e}", link.display());
    }
}
