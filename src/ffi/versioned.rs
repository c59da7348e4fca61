//! C structs that grow by appending fields, one version at a time (the
//! libgit2 way). The caller states the version its header describes; the
//! library writes and reads only the bytes of that version, fills newer
//! fields with defaults, and refuses a bool byte other than 0 or 1 before
//! it becomes a Rust `bool`. Every versioned options struct of the C API
//! (`cmdop_options`, `cmdop_exec_options`, `cmdop_transfer_options`) goes
//! through here, so the rules live in one place.
//!
//! Adding version N+1 of a struct: append the fields, bump its VERSION
//! constant, keep a private `#[repr(C)]` copy of the old layout and make
//! `size_of_version(N)` return that copy's size.

use super::boundary::Failure;

/// A `#[repr(C)]` struct whose first field is its `u32` version.
pub(super) trait Versioned: Sized {
    /// The C type's name, for messages.
    const NAME: &'static str;
    /// The C function that initialises it, for messages.
    const INIT: &'static str;
    /// The newest layout this library knows.
    const CURRENT: u32;
    /// Bytes of layout `version`, for 1 ..= CURRENT.
    fn size_of_version(version: u32) -> usize;
    /// The defaults in the current layout (its version field is CURRENT).
    fn defaults() -> Self;
    /// Names and offsets of the bool fields.
    fn bools() -> &'static [(&'static str, usize)];
}

/// Bytes of the caller's layout, or an error saying what to do.
fn layout_size<T: Versioned>(version: u32) -> Result<usize, Failure> {
    match version {
        0 => Err(Failure::invalid(format!(
            "{}.version is 0: initialise the struct with {}() and the VERSION constant of your header",
            T::NAME,
            T::INIT
        ))),
        v if v > T::CURRENT => Err(Failure::invalid(format!(
            "{} version {v} is unknown: this libcmdop knows versions 1 to {}; the program was built against a newer libcmdop, install that",
            T::NAME,
            T::CURRENT
        ))),
        v => Ok(T::size_of_version(v)),
    }
}

/// Writes the defaults of layout `version` into `*out`, and only that
/// layout's bytes; its version field becomes `version`.
///
/// # Safety
/// `out` is NULL or points to a writable struct of layout `version`.
pub(super) unsafe fn init<T: Versioned>(out: *mut T, version: u32) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::null("opts"));
    }
    let size = layout_size::<T>(version)?;
    let defaults = T::defaults();
    let bytes = (&defaults as *const T).cast::<u8>();
    // SAFETY: `out` is non-null and, by the contract, `size` writable
    // bytes; `defaults` is the current layout, at least as long (layouts
    // only grow); the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes, out.cast::<u8>(), size) };
    // SAFETY: every layout starts with the u32 version; `out` is writable.
    unsafe { std::ptr::write(out.cast::<u32>(), version) };
    Ok(())
}

/// Reads a possibly NULL struct into the current layout: the fields of the
/// caller's version, defaults for the rest. NULL means the defaults.
///
/// # Safety
/// `p` is NULL or points to a readable struct whose version field tells its
/// layout.
pub(super) unsafe fn read<T: Versioned>(p: *const T) -> Result<T, Failure> {
    if p.is_null() {
        return Ok(T::defaults());
    }
    // SAFETY: non-null; every layout starts with the u32 version field.
    let version = unsafe { std::ptr::read(p.cast::<u32>()) };
    let size = layout_size::<T>(version)?;
    let mut buf = std::mem::MaybeUninit::new(T::defaults());
    // SAFETY: the caller's struct has layout `version`: `size` readable
    // bytes; `buf` holds the current layout, at least that long.
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), buf.as_mut_ptr().cast::<u8>(), size) };
    for &(name, offset) in T::bools() {
        // SAFETY: `offset` is a bool field's offset inside `buf`, a field
        // byte initialised by the defaults or by the caller, not padding.
        let b = unsafe { buf.as_ptr().cast::<u8>().add(offset).read() };
        if b > 1 {
            return Err(Failure::invalid(format!(
                "opts->{name} is {b}: pass true or false"
            )));
        }
    }
    // SAFETY: every field is initialised and every bool byte is 0 or 1.
    Ok(unsafe { buf.assume_init() })
}
