//! Python tools from PyPI for the tests (moto, schemathesis), each in a
//! virtual environment under `target/` that is created on first use.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// `bin/<binary>` of `package`, installed with pip into `target/<venv>`
/// on first use. One installation per test binary at a time.
pub fn tool(venv: &str, package: &str, binary: &str) -> Result<PathBuf, String> {
    static INSTALL: OnceLock<Mutex<()>> = OnceLock::new();
    let _one = INSTALL
        .get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(venv);
    let tool = venv.join("bin").join(binary);
    if tool.exists() {
        return Ok(tool);
    }
    eprintln!("installing {package} into {} …", venv.display());
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", package]))?;
    Ok(tool)
}
