//! Build steps that cannot be plain Rust: the statically linked pause program
//! embedded in the agent, and the agent's own gRPC API from `proto/`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    build_pause();
    build_api();
}

/// Compiles `src/runtime/pause/pause.c` into a static executable in OUT_DIR.
///
/// The `cc` crate only produces libraries, so it is asked for the configured C
/// compiler and that compiler links the program itself. Static linking is what
/// lets the binary run as the only file of an otherwise empty image.
fn build_pause() {
    let source = "src/runtime/pause/pause.c";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("pause");
    let compiler = cc::Build::new().opt_level(2).get_compiler();
    let status = Command::new(compiler.path())
        .args(["-static", "-Os", "-s", "-Wall", "-Werror"])
        .arg(format!(
            "-DPAUSE_VERSION=\"{}\"",
            std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION")
        ))
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status()
        .expect("running the C compiler for the pause program");
    assert!(status.success(), "compiling {source} failed");
}

/// Generates client and server code for podkeeper's local API.
fn build_api() {
    let proto = "proto/podkeeper/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .compile_protos(&[proto], &["proto"])
        .expect("compiling proto/podkeeper/v1/agent.proto (is protoc installed?)");
}
