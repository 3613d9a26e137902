//! A user error from xtask is one line on stderr, even with RUST_BACKTRACE set (backtraces are for bugs).

use std::process::Command;

#[test]
fn a_user_error_is_one_line_whatever_rust_backtrace_says() {
    for backtrace in ["0", "1", "full"] {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["patch", "build", "no-such-patch"])
            .env("RUST_BACKTRACE", backtrace)
            .output()
            .expect("xtask starts");
        assert!(!output.status.success(), "building a patch that does not exist must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "RUST_BACKTRACE={backtrace}: expected one line, got:\n{stderr}");
        assert!(lines[0].starts_with("error: no patch \"no-such-patch\""), "unexpected message: {stderr}");
    }
}
