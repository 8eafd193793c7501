//! ```text
//! nectar-sink-http [--config FILE] [--target VENDOR] [run|check-config|check|replay ...]
//! nectar-sink-http check-spec FILE     validate a vendor spec offline
//! nectar-sink-http spec-schema         print the JSON Schema of the spec format
//! ```

use std::ffi::OsString;
use std::process::ExitCode;

/// The HTTP sink allocates with mimalloc: every event's request is built from fresh JSON values
/// and strings, and glibc's malloc and free were a fifth of its CPU under the sinks benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("check-spec") => {
            let Some(path) = args.get(2) else {
                eprintln!("usage: nectar-sink-http check-spec FILE");
                return ExitCode::from(2);
            };
            return match nectar_sink_http::check_spec(std::path::Path::new(path)) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            };
        }
        Some("spec-schema") => {
            print!("{}", nectar_sink_http::spec_schema());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut overrides = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        if let Some(vendor) = arg.strip_prefix("--target=") {
            overrides.push(("target.vendor".to_owned(), vendor.to_owned()));
            args.remove(i);
        } else if arg == "--target" && i + 1 < args.len() {
            overrides.push(("target.vendor".to_owned(), args[i + 1].to_string_lossy().into_owned()));
            args.drain(i..i + 2);
        } else {
            i += 1;
        }
    }
    nectar_sink::service::main_with::<nectar_sink_http::HttpSink>(args, overrides).await
}
