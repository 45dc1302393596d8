//! The `klines-sim` binary: its help explains it, and bad arguments or data
//! stop it with a message naming them.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_klines-sim");

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("KLINES_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn help_explains_the_simulator() {
    let out = sim(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--data",
        "--listen",
        "--speed",
        "--drop-finals",
        "--replicate",
    ] {
        assert!(text.contains(word), "--help mentions {word}:\n{text}");
    }
}

#[test]
fn bad_arguments_and_data_stop_with_a_message() {
    let out = sim(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data"));

    let out = sim(&["--data", "x.csv", "--drop-updates", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--drop-updates"));

    let out = sim(&[
        "--data",
        "/nonexistent/BTCUSDT-1m-2023-01-21.csv",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/BTCUSDT-1m-2023-01-21.csv"));
}
