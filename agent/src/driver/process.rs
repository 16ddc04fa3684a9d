//! Running host tools (qemu-img) with an argv, a deadline and bounded output. Never a shell.
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Most bytes kept from a tool's stdout or stderr.
const MAX_OUTPUT: u64 = 4 << 20;

/// How a run ended badly.
#[derive(Debug)]
pub enum RunError {
    Spawn(io::Error),
    Timeout,
    Failed { status: ExitStatus, stderr: String },
}

/// Runs `binary argv…` with stdin closed and `LC_ALL=C`; kills it when `timeout` expires.
/// Returns stdout when it exits successfully.
pub fn run(binary: &Path, argv: &[OsString], timeout: Duration) -> Result<Vec<u8>, RunError> {
    let mut cmd = Command::new(binary);
    cmd.args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.by_ref().take(MAX_OUTPUT).read_to_end(&mut buf);
                // Keep reading (and dropping) so the child never blocks on a full pipe.
                let _ = io::copy(&mut pipe, &mut io::sink());
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Spawn(e));
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(RunError::Failed {
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(stdout)
}
