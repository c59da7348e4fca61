//! Version queries.

use std::ffi::c_char;

/// Version of the library, e.g. "1.0.0": its major is CMDOP_ABI_VERSION,
/// its minor grows with compatible additions. Static; never free it.
/// Thread: any.
#[no_mangle]
pub extern "C" fn cmdop_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// ABI version of the library: changes only on incompatible changes to the
/// header, and is the major of the package version and of the soname
/// (libcmdop.so.1). Compare with CMDOP_ABI_VERSION at run time.
/// Thread: any.
#[no_mangle]
pub extern "C" fn cmdop_abi_version() -> u32 {
    CMDOP_ABI_VERSION
}

/// The ABI version this header describes.
pub const CMDOP_ABI_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::CMDOP_ABI_VERSION;

    /// The versioning policy (packaging/README.md): package major = ABI
    /// version = soname major, and the header's macro says the same.
    #[test]
    fn abi_version_is_the_package_major_and_the_header_macro() {
        let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
        assert_eq!(major, CMDOP_ABI_VERSION, "bump both together");
        let toml = include_str!("../../cbindgen.toml");
        let want = format!("#define CMDOP_ABI_VERSION {CMDOP_ABI_VERSION}\n");
        assert!(toml.contains(&want), "cbindgen.toml must say {want}");
    }
}
