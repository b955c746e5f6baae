//! Running this bench binary again in a child under callgrind, and reading the
//! instruction count it collected. Shared by the benches that count instructions.

use std::process::{Command, Output};

/// Runs this executable with `args` under `valgrind --tool=callgrind`, adding
/// `--toggle-collect=<collect>` when given (only inside functions matching it), and
/// returns its output and the instructions callgrind collected. Panics with the
/// child's stderr when it fails; `what` names the run in that message.
pub fn run_counted(args: &[&str], collect: Option<&str>, what: &str) -> (Output, f64) {
    let me = std::env::current_exe().expect("current exe");
    let mut valgrind = Command::new("valgrind");
    valgrind.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"]);
    if let Some(pattern) = collect {
        valgrind.arg(format!("--toggle-collect={pattern}"));
    }
    let out = valgrind
        .arg(me)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running valgrind (is it installed?): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    let instructions = stderr
        .lines()
        .find_map(|l| l.split("Collected : ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count from callgrind:\n{stderr}"));
    (out, instructions)
}
