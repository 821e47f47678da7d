//! The `eventline` binary itself: `serve --port 0` announces its address, serves, and stops
//! cleanly with exit code 0 on SIGTERM and SIGINT.

mod common;

use std::process::{Child, Command};

use common::{Raw, spawn_binary, wait_exit};

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args(["-s", name, &child.id().to_string()]).status().expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn serve_announces_its_port_and_stops_on_sigterm_with_exit_0() {
    for sig in ["TERM", "INT"] {
        let data = std::env::temp_dir().join(format!("eventline-cli-{}-{sig}", std::process::id()));
        let (child, addr) = spawn_binary(&data, &[]);
        let mut client = Raw::quiet(addr).await;
        client.send("SUB greet.* 1\r\nPUB greet.joe 5\r\nhello\r\n").await;
        client.expect_lines(&["MSG greet.joe 1 5", "hello"]).await;

        signal(&child, sig);
        client.expect_closed().await;
        let status = wait_exit(child).await;
        assert!(status.success(), "exit status after SIG{sig}: {status:?}");
        let _ = std::fs::remove_dir_all(&data);
    }
}
