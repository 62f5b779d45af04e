//! Loopback ports for servers a test starts that cannot pick their own (`taskfleet up`'s API and
//! nats-server, which must keep their port across a restart), and the `up` command on them.

use std::future::Future;
use std::path::Path;

/// A loopback port nothing listens on when asked. It is released before the caller's server
/// binds it, so another test may take it in between: a caller starts its server again on
/// another port when [`port_taken`] says that is why it failed.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("its address")
        .port()
}

/// Whether what a server said before it exited is that a port it was to bind was taken:
/// "Address already in use" from a Rust server, "address already in use" from nats-server.
pub fn port_taken(said: &str) -> bool {
    said.to_ascii_lowercase().contains("address already in use")
}

/// Runs `start` (a server start that picks its ports with [`free_port`] and waits until the
/// server is ready, or gives what the server said when it exited first) until it succeeds. A
/// start that failed because a port was taken ([`port_taken`]) is tried again on others, three
/// times at most; any other failure panics, naming `what`.
pub async fn start_on_free_ports<T, F, Fut>(what: &str, mut start: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut said = String::new();
    for _ in 0..3 {
        match start().await {
            Ok(started) => return started,
            Err(err) if port_taken(&err) => said = err,
            Err(err) => panic!("{what} exited before it was ready; it said:\n{err}"),
        }
    }
    panic!("{what} found its ports taken three times; it said:\n{said}");
}

/// `taskfleet up` with its data in `data`, its API on `api_port` and its nats-server (from the
/// repository's nats.conf) on `nats_port`; no NATS URL from the environment (it would use that
/// server instead), and killed with the test ([`super::dies_with_test`]) or when dropped.
pub fn up_command(data: &Path, api_port: u16, nats_port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskfleet"));
    super::dies_with_test(cmd.as_std_mut());
    cmd.args(["up", "--data-dir"])
        .arg(data)
        .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
        .args([
            "--nats-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"),
        ])
        .env("TASKFLEET_NATS__LOCAL_PORT", nats_port.to_string())
        .env_remove("NATS_URL")
        .kill_on_drop(true);
    cmd
}
