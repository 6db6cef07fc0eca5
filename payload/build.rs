fn main() {
    println!("cargo:rerun-if-changed=csrc/tls.c");
    // A SONAME lets `memray attach` name an already-loaded payload whose file is gone
    // (each attach removes its copy once loaded): glibc's dlopen matches loaded objects
    // by SONAME.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmemray_payload.so");
    cc::Build::new().file("csrc/tls.c").flag("-ftls-model=initial-exec").compile("memray_tls");
}
