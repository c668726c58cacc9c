fn main() {
    // The library stands in for NVIDIA's driver library, so it carries its soname.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rerun-if-changed=build.rs");
}
