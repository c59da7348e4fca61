//! Version queries.

use std::ffi::c_char;

/// Version of the library, e.g. "0.1.0". Static; never free it.
#[no_mangle]
pub extern "C" fn cmdop_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// ABI version of the library: changes only on incompatible changes to the
/// header. Compare with CMDOP_ABI_VERSION at run time.
#[no_mangle]
pub extern "C" fn cmdop_abi_version() -> u32 {
    CMDOP_ABI_VERSION
}

/// The ABI version this header describes.
pub const CMDOP_ABI_VERSION: u32 = 1;
