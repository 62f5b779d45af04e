//! A publish over a raw TCP NATS connection: `HPUB` with header bytes exactly as given (async-nats
//! refuses header values that are not UTF-8, so it cannot send them), answered by JetStream's
//! publish ack on a private inbox.

use anyhow::{bail, Context};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Publishes `payload` on `subject` with the raw header lines `headers` (each `Name: value`,
/// any bytes but CR/LF) and returns JetStream's ack (`{"stream": …, "seq": …}`) or its error.
pub async fn hpub(
    port: u16,
    subject: &str,
    headers: &[&[u8]],
    payload: &[u8],
) -> anyhow::Result<Value> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut conn = BufReader::new(stream);
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    if !line.starts_with("INFO") {
        bail!("expected INFO from nats-server, got {line:?}");
    }
    let mut block = b"NATS/1.0\r\n".to_vec();
    for h in headers {
        block.extend_from_slice(h);
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    let inbox = format!("_INBOX.chaos_raw_{:x}", rand::random::<u64>());
    let mut out = Vec::new();
    out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1,\"name\":\"chaos-raw\"}\r\n");
    out.extend_from_slice(format!("SUB {inbox} 1\r\n").as_bytes());
    let total = block.len() + payload.len();
    out.extend_from_slice(format!("HPUB {subject} {inbox} {} {total}\r\n", block.len()).as_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    conn.get_mut().write_all(&out).await?;
    tokio::time::timeout(Duration::from_secs(5), read_ack(&mut conn))
        .await
        .context("no JetStream ack within 5 s")?
}

/// Reads protocol lines until the ack on the inbox (`MSG <inbox> 1 <n>`) or an `-ERR`.
async fn read_ack(conn: &mut BufReader<TcpStream>) -> anyhow::Result<Value> {
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("nats-server closed the connection");
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("MSG") => {
                let n: usize = words.last().context("MSG without size")?.parse()?;
                let mut body = vec![0; n + 2];
                conn.read_exact(&mut body).await?;
                body.truncate(n);
                return Ok(serde_json::from_slice(&body)?);
            }
            Some("PING") => conn.get_mut().write_all(b"PONG\r\n").await?,
            Some("-ERR") => bail!("nats-server: {}", line.trim()),
            _ => {}
        }
    }
}
