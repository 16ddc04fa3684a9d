//! Compiles the minimal etcd v3 KV/Maintenance contract (`proto/etcd_kv.proto`) with the
//! pure-Rust `protox` compiler into tonic clients, so the same load generator drives etcd.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    let fds = protox::compile(["proto/etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
