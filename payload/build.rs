fn main() {
    println!("cargo:rerun-if-changed=csrc/tls.c");
    cc::Build::new().file("csrc/tls.c").flag("-ftls-model=initial-exec").compile("memray_tls");
}
