//! The tests and examples of this crate run against the library that
//! thinstack-sys linked: its folder becomes their RUNPATH, so `cargo test`
//! needs no LD_LIBRARY_PATH. A program of your own that links a library
//! outside the loader's folders does the same in its build script.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_THINSTACK_LIB_DIR");
    if let Ok(dir) = std::env::var("DEP_THINSTACK_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir);
    }
}
