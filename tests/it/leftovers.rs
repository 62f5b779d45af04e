//! What a test binary stopped by a signal (Ctrl-C, a runner's timeout) leaves running: nothing.
//! No `Drop` runs then, so every child the harness starts is tied to the thread that started it.

use crate::harness::process::processes_with;
use crate::harness::{eventually, NatsServer};
use std::time::Duration;

#[tokio::test]
async fn a_nats_server_left_behind_by_its_test_is_killed_when_the_test_thread_ends() {
    // Arrange: a thread starts a server and ends without dropping it, as a killed test would.
    let (pid, store) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let server = rt.block_on(NatsServer::start());
        let left = (server.pid().expect("it runs"), server.store_dir());
        std::mem::forget(server);
        left
    })
    .join()
    .expect("the thread");

    // Act: nothing; the thread has ended.

    // Assert
    let what = format!("nats-server {pid}, left by an ended thread, to be killed");
    let marker = store.display().to_string();
    eventually(&what, Duration::from_secs(10), || {
        let left = processes_with(&marker);
        async move { left.is_empty().then_some(()) }
    })
    .await;
    let _ = std::fs::remove_dir_all(store.parent().expect("the server's temp dir"));
}
