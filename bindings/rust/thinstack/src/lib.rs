//! Safe Rust bindings for libthinstack: virtual block devices in user space
//! built from stacked layers (file, linear, thin-pool and thin volumes,
//! snapshot, crypt, ...) described by one JSON document.
//!
//! ```no_run
//! let stack = thinstack::Stack::open("stack.json")?;
//! let vm = stack.device("vm0").expect("an export named vm0");
//! vm.provision(0, 1 << 20)?;              // reserve space, write nothing
//! vm.write(0, &[0x5a; 4096])?;
//! for e in vm.block_status(0, vm.size())? {
//!     println!("{:>12} +{:<12} {}", e.offset, e.length, e.describe());
//! }
//! stack.close()?;                         // flushes every layer
//! # Ok::<(), thinstack::Error>(())
//! ```
//!
//! Ownership and threads follow the C headers (`include/libthinstack/io.h`,
//! `thin.h`): a [`Stack`] owns what it opened and closes it when dropped (or
//! by [`Stack::close`], which reports a failed flush). [`Device`] and
//! [`Pool`] borrow the stack, so the compiler keeps every request finished
//! before the close, as the C API asks. The data path, look-ups and pool
//! calls are thread-safe in C, so `Stack`, `Device` and `Pool` are `Send`
//! and `Sync`: share a `&Device` (or copy it, it is `Copy`) among worker
//! threads, e.g. with `std::thread::scope`.
//!
//! Every failure is an [`Error`]: the errno and the library's message that
//! says what failed, where and why ("read at offset 0 + length 100 is not a
//! multiple of the logical block size 512 of d").
//!
//! The library is found at build time by thinstack-sys (its build script
//! says where it looks). Offsets and lengths are bytes, multiples of the
//! device's logical block size.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::Mutex;

pub use thinstack_sys as sys;

/// The limits a device takes requests within (`ts_limits`).
pub type Limits = sys::ts_limits;
/// A thin pool's state, as dm-thin's status line (`ts_pool_status`).
pub type PoolStatus = sys::ts_pool_status;
/// One volume as the pool's metadata knows it (`ts_thin_info`).
pub type ThinInfo = sys::ts_thin_info;

/// Request flags (`TS_IO_*`).
pub mod flags {
    /// WRITE, WRITE_ZEROES: durable on return.
    pub const FUA: u32 = thinstack_sys::TS_IO_FUA;
    /// WRITE_ZEROES: the layers may free the space.
    pub const MAY_UNMAP: u32 = thinstack_sys::TS_IO_MAY_UNMAP;
    /// WRITE_ZEROES: fail with EOPNOTSUPP rather than write zero buffers.
    pub const NOFALLBACK: u32 = thinstack_sys::TS_IO_NOFALLBACK;
}

// ------------------------------------------------------------------ errors

/// An error from libthinstack: a (positive) errno and the library's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    message: String,
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

fn strerror(code: c_int) -> String {
    unsafe { CStr::from_ptr(sys::ts_strerror(code)) }.to_string_lossy().into_owned()
}

impl Error {
    /// An error with `errno` (either sign) and a message.
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error { errno: errno.abs(), message: message.into() }
    }

    /// The errno, positive (`libc::ENOSPC`'s value, 28, for a full pool).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// What failed, where and why.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The errno's symbolic name, "ENOSPC".
    pub fn name(&self) -> String {
        unsafe { CStr::from_ptr(sys::ts_err_name(self.errno)) }.to_string_lossy().into_owned()
    }

    /// The errno as std's error kind.
    pub fn kind(&self) -> std::io::ErrorKind {
        std::io::Error::from_raw_os_error(self.errno).kind()
    }

    /// From a control-path call's return and its `ts_error`.
    fn from_c(code: c_int, err: &sys::ts_error) -> Error {
        let msg = unsafe { CStr::from_ptr(err.msg.as_ptr()) }.to_string_lossy().into_owned();
        Error::new(code, if msg.is_empty() { strerror(code) } else { msg })
    }

    /// From a data-path call's return: its reason is in the calling
    /// thread's last-error record when that record is this failure's.
    fn from_last(code: c_int) -> Error {
        let msg = unsafe {
            let p = sys::ts_last_error();
            if p.is_null() || sys::ts_last_errno() != code {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Error::new(code, if msg.is_empty() { strerror(code) } else { msg })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.message, self.name())
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(e.kind(), e)
    }
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(22, format!("{} {:?} contains a NUL byte", what, s)))
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::new(22, format!("path {} contains a NUL byte", p.display())))
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(ptr::null(), |c| c.as_ptr())
}

fn ctl(r: c_int, err: &sys::ts_error) -> Result<()> {
    if r < 0 {
        Err(Error::from_c(r, err))
    } else {
        Ok(())
    }
}

fn data(r: c_int) -> Result<()> {
    if r < 0 {
        Err(Error::from_last(r))
    } else {
        Ok(())
    }
}

/// A string the library allocated with malloc, taken and freed.
unsafe fn take_c_string(p: *mut c_char, what: &str) -> Result<String> {
    if p.is_null() {
        return Err(Error::new(12, format!("{}: out of memory", what)));
    }
    let s = CStr::from_ptr(p).to_string_lossy().into_owned();
    free(p as *mut c_void);
    Ok(s)
}

extern "C" {
    fn free(p: *mut c_void);
}

fn fixed_str(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The library's version, "MAJOR.MINOR.PATCH".
pub fn version() -> &'static str {
    unsafe { CStr::from_ptr(sys::ts_version()) }.to_str().unwrap_or("?")
}

/// Parse a size as the configuration does: bytes, or a number with K, M, G,
/// T or P (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let c = c_string(s, "size")?;
    let mut out = 0u64;
    let r = unsafe { sys::ts_parse_size(c.as_ptr(), &mut out) };
    if r < 0 {
        Err(Error::new(r, format!("{:?} is not a size (bytes, or a number with K, M, G, T or P)", s)))
    } else {
        Ok(out)
    }
}

/// `bytes` in the largest exact unit ("64K", "1G", "12345").
pub fn format_size(bytes: u64) -> String {
    let mut buf = [0 as c_char; 32];
    unsafe { sys::ts_format_size(bytes, buf.as_mut_ptr(), buf.len()) };
    fixed_str(&buf)
}

// ------------------------------------------------------------------ stacks

/// How to open a stack (`ts_open_opts`).
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    read_only: bool,
    force_share: bool,
    plugin_dir: Option<PathBuf>,
}

impl OpenOptions {
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// Open every layer read-only; nothing is created or formatted.
    pub fn read_only(&mut self, on: bool) -> &mut OpenOptions {
        self.read_only = on;
        self
    }

    /// With read_only: read without the shared lock, beside a writer (what
    /// is read may be stale, as `qemu-img -U`).
    pub fn force_share(&mut self, on: bool) -> &mut OpenOptions {
        self.force_share = on;
        self
    }

    /// Where external layer types are looked up (default: $TS_PLUGIN_DIR,
    /// then the installed folder).
    pub fn plugin_dir<P: AsRef<Path>>(&mut self, dir: P) -> &mut OpenOptions {
        self.plugin_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    fn c_opts(&self, plugin_dir: &Option<CString>) -> sys::ts_open_opts {
        let mut flags = 0;
        if self.read_only {
            flags |= sys::TS_OPEN_READ_ONLY;
        }
        if self.force_share {
            flags |= sys::TS_OPEN_FORCE_SHARE;
        }
        sys::ts_open_opts {
            struct_size: std::mem::size_of::<sys::ts_open_opts>() as u32,
            flags,
            plugin_dir: opt_ptr(plugin_dir),
            event: None,
            event_arg: ptr::null_mut(),
        }
    }

    fn plugin_c(&self) -> Result<Option<CString>> {
        self.plugin_dir.as_deref().map(c_path).transpose()
    }

    /// Open the stack of the JSON file `path`; relative paths in it resolve
    /// against its folder. A failed open leaves every file as it was.
    pub fn open<P: AsRef<Path>>(&self, path: P) -> Result<Stack> {
        let cpath = c_path(path.as_ref())?;
        let pd = self.plugin_c()?;
        let opts = self.c_opts(&pd);
        let mut err = sys::ts_error::default();
        let mut out = ptr::null_mut();
        let r = unsafe { sys::ts_stack_open_file(cpath.as_ptr(), &opts, &mut out, &mut err) };
        ctl(r, &err)?;
        Ok(Stack { raw: NonNull::new(out).expect("an open stack") })
    }

    /// Open the stack of a JSON document; relative paths resolve against
    /// `base_dir` (None: the current folder).
    pub fn open_json(&self, json: &str, base_dir: Option<&Path>) -> Result<Stack> {
        let cjson = c_string(json, "the configuration")?;
        let base = base_dir.map(c_path).transpose()?;
        let pd = self.plugin_c()?;
        let opts = self.c_opts(&pd);
        let mut err = sys::ts_error::default();
        let mut out = ptr::null_mut();
        let r =
            unsafe { sys::ts_stack_open_string(cjson.as_ptr(), opt_ptr(&base), &opts, &mut out, &mut err) };
        ctl(r, &err)?;
        Ok(Stack { raw: NonNull::new(out).expect("an open stack") })
    }
}

/// An open stack. Dropping it flushes and closes every layer; [`Stack::close`]
/// does the same and reports a failed flush.
pub struct Stack {
    raw: NonNull<sys::ts_stack>,
}

// The C API lets any thread use a stack and any thread close it (once no
// other uses it, which the borrows of Device and Pool guarantee).
unsafe impl Send for Stack {}
unsafe impl Sync for Stack {}

impl Stack {
    /// Open the stack of a JSON file for writing (see [`OpenOptions`]).
    pub fn open<P: AsRef<Path>>(path: P) -> Result<Stack> {
        OpenOptions::new().open(path)
    }

    /// Open the stack of a JSON document (see [`OpenOptions::open_json`]).
    pub fn from_json(json: &str, base_dir: Option<&Path>) -> Result<Stack> {
        OpenOptions::new().open_json(json, base_dir)
    }

    fn ptr(&self) -> *mut sys::ts_stack {
        self.raw.as_ptr()
    }

    /// Flush every layer (committing thin metadata) and close the stack.
    /// The stack is closed even when a flush fails.
    pub fn close(self) -> Result<()> {
        let raw = self.raw;
        std::mem::forget(self);
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_stack_close(raw.as_ptr(), &mut err) };
        ctl(r, &err)
    }

    fn wrap(&self, p: *mut sys::ts_dev) -> Option<Device<'_>> {
        NonNull::new(p).map(|raw| Device { raw, _stack: PhantomData })
    }

    /// An exported device by name.
    pub fn device(&self, name: &str) -> Option<Device<'_>> {
        let c = CString::new(name).ok()?;
        self.wrap(unsafe { sys::ts_stack_dev(self.ptr(), c.as_ptr()) })
    }

    /// Any node by name, exported or not.
    pub fn node(&self, name: &str) -> Option<Device<'_>> {
        let c = CString::new(name).ok()?;
        self.wrap(unsafe { sys::ts_stack_node(self.ptr(), c.as_ptr()) })
    }

    /// The exported devices, in "exports" order.
    pub fn devices(&self) -> Vec<Device<'_>> {
        let n = unsafe { sys::ts_stack_ndevs(self.ptr()) };
        (0..n).filter_map(|i| self.wrap(unsafe { sys::ts_stack_dev_at(self.ptr(), i) })).collect()
    }

    /// Every node, children first.
    pub fn nodes(&self) -> Vec<Device<'_>> {
        let n = unsafe { sys::ts_stack_nnodes(self.ptr()) };
        (0..n).filter_map(|i| self.wrap(unsafe { sys::ts_stack_node_at(self.ptr(), i) })).collect()
    }

    /// The `thin-pool` node `name`.
    pub fn pool(&self, name: &str) -> Result<Pool<'_>> {
        let dev = self
            .node(name)
            .ok_or_else(|| Error::new(2, format!("the stack has no layer named {:?}", name)))?;
        if dev.layer_type() != "thin-pool" {
            return Err(Error::new(
                22,
                format!("layer {:?} is a {}, not a thin-pool", name, dev.layer_type()),
            ));
        }
        Ok(Pool { dev, name: c_string(name, "pool name")? })
    }

    /// The JSON document that re-opens the stack as it is now; secrets
    /// (crypt's inline key) are masked unless `secrets`.
    pub fn config_json(&self, secrets: bool) -> Result<String> {
        let f = if secrets { sys::TS_CONFIG_SECRETS } else { 0 };
        unsafe { take_c_string(sys::ts_stack_config_json(self.ptr(), f), "config_json") }
    }

    /// The configuration file the volume calls rewrite, if the stack has one.
    pub fn config_path(&self) -> Option<PathBuf> {
        let p = unsafe { sys::ts_stack_config_path(self.ptr()) };
        if p.is_null() {
            None
        } else {
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(unsafe { CStr::from_ptr(p) }.to_bytes())))
        }
    }

    /// Name the configuration file a stack opened from a document stands
    /// for (None forgets it). Takes `&mut` because the C call invalidates
    /// what [`Stack::config_path`] read.
    pub fn set_config_path(&mut self, path: Option<&Path>) -> Result<()> {
        let c = path.map(c_path).transpose()?;
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_stack_set_config_path(self.ptr(), opt_ptr(&c), &mut err) };
        ctl(r, &err)
    }

    /// The volumes of every pool the stack holds (see [`Pool::volumes`]).
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        volume_list(self.ptr(), ptr::null())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut err = sys::ts_error::default();
        unsafe { sys::ts_stack_close(self.raw.as_ptr(), &mut err) };
    }
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.devices().iter().map(|d| d.name()).collect();
        f.debug_struct("Stack").field("exports", &names).finish()
    }
}

// ----------------------------------------------------------------- devices

/// One extent of block status: `flags` 0 is allocated data; see
/// [`Extent::is_hole`] and [`Extent::reads_zeroes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    /// `sys::TS_EXTENT_HOLE` | `sys::TS_EXTENT_ZERO`
    pub flags: u32,
}

impl Extent {
    /// No space is allocated.
    pub fn is_hole(&self) -> bool {
        self.flags & sys::TS_EXTENT_HOLE != 0
    }
    /// The range reads as zeroes.
    pub fn reads_zeroes(&self) -> bool {
        self.flags & sys::TS_EXTENT_ZERO != 0
    }
    /// "data", "zero" (allocated, reads zeroes), "hole" or "hole, undefined".
    pub fn describe(&self) -> &'static str {
        match (self.is_hole(), self.reads_zeroes()) {
            (false, false) => "data",
            (false, true) => "zero",
            (true, true) => "hole",
            (true, false) => "hole, undefined",
        }
    }
}

/// A node of an open stack: an exported device or any layer reached by
/// name. It borrows the stack; it is `Copy`, `Send` and `Sync`, and every
/// request may come from any thread at any time.
#[derive(Clone, Copy)]
pub struct Device<'a> {
    raw: NonNull<sys::ts_dev>,
    _stack: PhantomData<&'a Stack>,
}

unsafe impl Send for Device<'_> {}
unsafe impl Sync for Device<'_> {}

// ts_dev_grow calls on one device must not overlap; serialising them all
// is cheap (they are rare) and keeps grow() callable through `&self`.
static GROW_LOCK: Mutex<()> = Mutex::new(());

impl<'a> Device<'a> {
    fn ptr(&self) -> *mut sys::ts_dev {
        self.raw.as_ptr()
    }

    /// The node's name in the configuration.
    pub fn name(&self) -> &'a str {
        unsafe { CStr::from_ptr(sys::ts_dev_name(self.ptr())) }.to_str().unwrap_or("")
    }

    /// Its layer type ("file", "thin", "thin-pool", ...).
    pub fn layer_type(&self) -> &'a str {
        unsafe { CStr::from_ptr(sys::ts_dev_type(self.ptr())) }.to_str().unwrap_or("")
    }

    /// Size in bytes (it may grow while the stack is open).
    pub fn size(&self) -> u64 {
        unsafe { sys::ts_dev_size(self.ptr()) }
    }

    /// The stacked limits (a copy).
    pub fn limits(&self) -> Limits {
        unsafe { *sys::ts_dev_limits(self.ptr()) }
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        data(unsafe { sys::ts_pread(self.ptr(), buf.as_mut_ptr() as *mut c_void, buf.len(), offset) })
    }

    /// Scatter read into guest buffers; the request is their total length.
    pub fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        // IoSliceMut is ABI-compatible with struct iovec on Unix.
        let n = c_int::try_from(bufs.len()).map_err(|_| Error::new(22, "too many buffers"))?;
        data(unsafe { sys::ts_preadv(self.ptr(), bufs.as_ptr() as *const sys::iovec, n, offset) })
    }

    /// Write `buf` at `offset`.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_flags(offset, buf, 0)
    }

    /// Write `buf` at `offset`, durable on return.
    pub fn write_fua(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_flags(offset, buf, flags::FUA)
    }

    fn write_flags(&self, offset: u64, buf: &[u8], f: u32) -> Result<()> {
        data(unsafe { sys::ts_pwrite(self.ptr(), buf.as_ptr() as *const c_void, buf.len(), offset, f) })
    }

    /// Gather write; `fua` makes it durable on return.
    pub fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>], fua: bool) -> Result<()> {
        let n = c_int::try_from(bufs.len()).map_err(|_| Error::new(22, "too many buffers"))?;
        let f = if fua { flags::FUA } else { 0 };
        data(unsafe { sys::ts_pwritev(self.ptr(), bufs.as_ptr() as *const sys::iovec, n, offset, f) })
    }

    /// Make every completed write durable (a thin pool commits its metadata).
    pub fn flush(&self) -> Result<()> {
        data(unsafe { sys::ts_flush(self.ptr()) })
    }

    /// The range is no longer needed and may be freed.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        data(unsafe { sys::ts_discard(self.ptr(), offset, len) })
    }

    /// The range reads as zeroes afterwards. `flags`: [`flags::MAY_UNMAP`]
    /// (space may be freed), [`flags::NOFALLBACK`], [`flags::FUA`]; without
    /// MAY_UNMAP the space stays or becomes allocated.
    pub fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<()> {
        data(unsafe { sys::ts_write_zeroes(self.ptr(), offset, len, flags) })
    }

    /// Reserve space for the range in this device and every layer below,
    /// writing no data: later writes there do not fail for lack of space.
    pub fn provision(&self, offset: u64, len: u64) -> Result<()> {
        data(unsafe { sys::ts_provision(self.ptr(), offset, len) })
    }

    /// The allocation of [offset, offset+len), as sorted contiguous extents
    /// covering it (walked in bounded steps, so any size is fine).
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.checked_add(len).ok_or_else(|| Error::new(22, "offset + length overflows"))?;
        let mut out = Vec::new();
        let mut list = sys::ts_extent_list::default();
        let mut at = offset;
        let mut result = Ok(());
        while at < end {
            unsafe { sys::ts_extent_list_reset(&mut list) };
            let r = unsafe { sys::ts_block_status_bounded(self.ptr(), at, end - at, 0, &mut list) };
            if r < 0 {
                result = Err(Error::from_last(r));
                break;
            }
            let v = if list.n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(list.v, list.n) } };
            let next = v.last().map_or(end, |e| e.offset + e.length);
            for e in v {
                let e = Extent { offset: e.offset, length: e.length, flags: e.flags };
                match out.last_mut() {
                    Some(Extent { offset: o, length: l, flags: f })
                        if *o + *l == e.offset && *f == e.flags =>
                    {
                        *l += e.length
                    }
                    _ => out.push(e),
                }
            }
            if next <= at {
                result = Err(Error::new(5, "block status made no progress"));
                break;
            }
            at = next;
        }
        unsafe { sys::ts_extent_list_free(&mut list) };
        result.map(|_| out)
    }

    /// Grow the device to `new_size` bytes keeping its contents (a file
    /// layer extends its file). Requests may run meanwhile.
    pub fn grow(&self, new_size: u64) -> Result<()> {
        let _g = GROW_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_dev_grow(self.ptr(), new_size, &mut err) };
        ctl(r, &err)
    }

    /// Send the layer a message of its own verbs ("mark NAME" for log-writes).
    pub fn message(&self, msg: &str) -> Result<()> {
        let c = c_string(msg, "message")?;
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_dev_message(self.ptr(), c.as_ptr(), &mut err) };
        ctl(r, &err)
    }

    /// Request counters and the layer's own report, as a JSON object text.
    pub fn status_json(&self) -> Result<String> {
        unsafe { take_c_string(sys::ts_dev_status_json(self.ptr()), "status_json") }
    }

    /// The stacked limits as a JSON object text.
    pub fn limits_json(&self) -> Result<String> {
        unsafe { take_c_string(sys::ts_dev_limits_json(self.ptr()), "limits_json") }
    }
}

impl fmt::Debug for Device<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name())
            .field("type", &self.layer_type())
            .field("size", &self.size())
            .finish()
    }
}

// ------------------------------------------------------------------- pools

/// One volume as the pool and the configuration see it together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Layer name; empty when no layer names the volume.
    pub name: String,
    pub pool: String,
    /// The layer's "origin"; empty when none.
    pub origin: String,
    pub id: u32,
    /// false: the layer names a volume the pool lacks.
    pub in_pool: bool,
    /// Open as a layer of this stack.
    pub open: bool,
    pub size: u64,
    pub mapped_bytes: u64,
    pub provisioned_bytes: u64,
    pub highest_mapped: u64,
}

fn volume_list(stack: *mut sys::ts_stack, pool: *const c_char) -> Result<Vec<VolumeInfo>> {
    let mut v: Vec<sys::ts_volume_info> = Vec::new();
    loop {
        let mut count = 0usize;
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_volume_list(stack, pool, v.as_mut_ptr(), v.len(), &mut count, &mut err) };
        ctl(r, &err)?;
        if count <= v.len() {
            v.truncate(count);
            break;
        }
        v = vec![sys::ts_volume_info::default(); count];
    }
    Ok(v.iter()
        .map(|i| VolumeInfo {
            name: fixed_str(&i.name),
            pool: fixed_str(&i.pool),
            origin: fixed_str(&i.origin),
            id: i.id,
            in_pool: i.in_pool,
            open: i.open,
            size: i.size,
            mapped_bytes: i.mapped_bytes,
            provisioned_bytes: i.provisioned_bytes,
            highest_mapped: i.highest_mapped,
        })
        .collect())
}

/// A `thin-pool` node of a stack. The volume calls change the pool and the
/// stack's configuration file together (rewritten atomically under a lock);
/// the raw calls ([`Pool::create_thin`], ...) change the pool's metadata
/// only, as dm-thin's pool messages. Every call commits before it returns
/// and may run while other threads do I/O on the pool's volumes.
#[derive(Clone, Debug)]
pub struct Pool<'a> {
    dev: Device<'a>,
    name: CString,
}

impl<'a> Pool<'a> {
    /// The pool's node (its status_json, limits, ...).
    pub fn device(&self) -> Device<'a> {
        self.dev
    }

    fn stack(&self) -> *mut sys::ts_stack {
        unsafe { sys::ts_dev_stack(self.dev.ptr()) }
    }

    fn call(&self, f: impl FnOnce(*mut sys::ts_dev, *mut sys::ts_error) -> c_int) -> Result<()> {
        let mut err = sys::ts_error::default();
        let r = f(self.dev.ptr(), &mut err);
        ctl(r, &err)
    }

    /// The pool's state.
    pub fn status(&self) -> Result<PoolStatus> {
        let mut st = PoolStatus::default();
        self.call(|p, e| unsafe { sys::ts_pool_get_status(p, &mut st, e) })?;
        Ok(st)
    }

    /// The volumes in the pool's metadata, by ascending id.
    pub fn thins(&self) -> Result<Vec<ThinInfo>> {
        let mut v: Vec<ThinInfo> = Vec::new();
        loop {
            let mut count = 0usize;
            let (ptr, len) = (v.as_mut_ptr(), v.len());
            self.call(|p, e| unsafe { sys::ts_pool_list_thins(p, ptr, len, &mut count, e) })?;
            if count <= v.len() {
                v.truncate(count);
                return Ok(v);
            }
            v = vec![ThinInfo::default(); count];
        }
    }

    /// Create an empty volume `id` in the metadata only (no layer).
    pub fn create_thin(&self, id: u32) -> Result<()> {
        self.call(|p, e| unsafe { sys::ts_pool_create_thin(p, id, e) })
    }

    /// Create volume `id` as a snapshot of `origin_id`, in the metadata only.
    pub fn create_snap(&self, id: u32, origin_id: u32) -> Result<()> {
        self.call(|p, e| unsafe { sys::ts_pool_create_snap(p, id, origin_id, e) })
    }

    /// Delete volume `id` from the metadata.
    pub fn delete_thin(&self, id: u32) -> Result<()> {
        self.call(|p, e| unsafe { sys::ts_pool_delete_thin(p, id, e) })
    }

    /// Compare-and-swap the userspace transaction id.
    pub fn set_transaction_id(&self, current: u64, new: u64) -> Result<()> {
        self.call(|p, e| unsafe { sys::ts_pool_set_transaction_id(p, current, new, e) })
    }

    /// Keep a read-only copy of the metadata (for `thin_dump -m`).
    pub fn reserve_metadata_snap(&self) -> Result<()> {
        self.call(|p, e| unsafe { sys::ts_pool_reserve_metadata_snap(p, e) })
    }

    /// Drop the copy kept by reserve_metadata_snap.
    pub fn release_metadata_snap(&self) -> Result<()> {
        self.call(|p, e| unsafe { sys::ts_pool_release_metadata_snap(p, e) })
    }

    /// Create an empty volume of `size` bytes with the lowest free id and
    /// add the `thin` layer `name` for it (exported when `export`); returns
    /// the id. The layer opens with the next open of the configuration.
    pub fn create_volume(&self, name: &str, size: u64, export: bool) -> Result<u32> {
        self.create_volume_id(name, size, sys::TS_VOLUME_ANY_ID, export)
    }

    /// create_volume with a chosen id.
    pub fn create_volume_id(&self, name: &str, size: u64, id: u32, export: bool) -> Result<u32> {
        let cname = c_string(name, "volume name")?;
        let f = if export { sys::TS_VOLUME_EXPORT } else { 0 };
        let mut got = 0u32;
        let mut err = sys::ts_error::default();
        let r = unsafe {
            sys::ts_volume_create(
                self.stack(),
                self.name.as_ptr(),
                cname.as_ptr(),
                size,
                id,
                f,
                &mut got,
                &mut err,
            )
        };
        ctl(r, &err).map(|_| got)
    }

    /// Snapshot the volume of layer `origin` as a new layer `name` (the
    /// lowest free id, the origin's size); returns the id. An open origin
    /// is quiesced for the instant of the snapshot.
    pub fn snapshot_volume(&self, origin: &str, name: &str, export: bool) -> Result<u32> {
        let corigin = c_string(origin, "origin")?;
        let cname = c_string(name, "volume name")?;
        let f = if export { sys::TS_VOLUME_EXPORT } else { 0 };
        let mut got = 0u32;
        let mut err = sys::ts_error::default();
        let r = unsafe {
            sys::ts_volume_snapshot(self.stack(), corigin.as_ptr(), cname.as_ptr(), f, &mut got, &mut err)
        };
        ctl(r, &err).map(|_| got)
    }

    /// Delete the volume of layer `name` and the layer (EBUSY while open).
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let cname = c_string(name, "volume name")?;
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_volume_delete(self.stack(), cname.as_ptr(), &mut err) };
        ctl(r, &err)
    }

    /// Delete volume `id` that no layer names (left by an interrupted create).
    pub fn delete_volume_id(&self, id: u32) -> Result<()> {
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_volume_delete_id(self.stack(), self.name.as_ptr(), id, &mut err) };
        ctl(r, &err)
    }

    /// Set the size of layer `name`'s volume. Growing an open volume grows
    /// it live; shrinking past mapped blocks fails (ENOTEMPTY) unless
    /// `discard_beyond`, which unmaps them first.
    pub fn resize_volume(&self, name: &str, size: u64, discard_beyond: bool) -> Result<()> {
        let cname = c_string(name, "volume name")?;
        let f = if discard_beyond { sys::TS_VOLUME_DISCARD_BEYOND } else { 0 };
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_volume_resize(self.stack(), cname.as_ptr(), size, f, &mut err) };
        ctl(r, &err)
    }

    /// The pool's volumes with their layers, by id, then layers whose
    /// volume is missing.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        volume_list(self.stack(), self.name.as_ptr())
    }

    /// Grow the data space to `new_size` bytes, growing a `file` layer below
    /// and writing its size into the configuration.
    pub fn extend(&self, new_size: u64) -> Result<()> {
        self.extend_flags(new_size, 0)
    }

    /// Grow the metadata space to `new_size` bytes, as extend does.
    pub fn extend_metadata(&self, new_size: u64) -> Result<()> {
        self.extend_flags(new_size, sys::TS_POOL_EXTEND_METADATA)
    }

    fn extend_flags(&self, new_size: u64, f: u32) -> Result<()> {
        let mut err = sys::ts_error::default();
        let r = unsafe { sys::ts_stack_pool_extend(self.stack(), self.name.as_ptr(), new_size, f, &mut err) };
        ctl(r, &err)
    }
}
