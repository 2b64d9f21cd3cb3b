//! Finds libthinstack.so for the linker, in order: $THINSTACK_LIB_DIR (the
//! folder holding it), $TS_BUILD_DIR (a CMake build folder), the build
//! folder of the source tree these crates sit in (<tree>/build), the -L of
//! `pkg-config --libs thinstack` (run as a program: no pkg-config crate),
//! then the linker's default folders. The folder found is passed to
//! dependent crates' build scripts as DEP_THINSTACK_LIB_DIR and written into
//! this crate's own tests as their RUNPATH.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn has_lib(dir: &Path) -> bool {
    dir.join("libthinstack.so").exists()
}

fn from_pkg_config() -> Option<PathBuf> {
    let out = Command::new("pkg-config").args(["--libs-only-L", "thinstack"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("-L"))
        .map(PathBuf::from)
        .find(|d| has_lib(d))
}

fn find() -> Option<PathBuf> {
    for var in ["THINSTACK_LIB_DIR", "TS_BUILD_DIR"] {
        if let Some(d) = env::var_os(var) {
            let d = PathBuf::from(d);
            if !has_lib(&d) {
                println!("cargo:warning=${} is {}, which has no libthinstack.so", var, d.display());
            }
            return Some(d);
        }
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?);
    if let Some(tree) = manifest.ancestors().nth(3) {
        let build = tree.join("build");
        if tree.join("include/libthinstack/thinstack.h").exists() && has_lib(&build) {
            return Some(build);
        }
    }
    from_pkg_config()
}

fn main() {
    for var in ["THINSTACK_LIB_DIR", "TS_BUILD_DIR", "PKG_CONFIG_PATH"] {
        println!("cargo:rerun-if-env-changed={}", var);
    }
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(dir) = find() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        println!("cargo:lib_dir={}", dir.display());
    } else {
        println!(
            "cargo:warning=libthinstack.so not found through $THINSTACK_LIB_DIR, $TS_BUILD_DIR, \
             the source tree's build folder or pkg-config: linking with the linker's defaults"
        );
    }
    println!("cargo:rustc-link-lib=dylib=thinstack");
}
