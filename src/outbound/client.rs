//! The hardened HTTP client for requests to user-given URLs: no proxy (a proxy would resolve
//! names past the [`SafeResolver`]), no redirects (a redirect target is a new, unchecked URL),
//! the safe resolver with the operator's [`AllowList`], a timeout per request and a
//! `taskfleet/<version>` user agent. Checking each URL before sending ([`super::ssrf::check_url`])
//! stays the caller's job: the client only sees addresses.

use super::ssrf::{AllowList, SafeResolver};
use std::sync::Arc;
use std::time::Duration;

/// The `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("taskfleet/", env!("CARGO_PKG_VERSION"));

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// reqwest refused the client configuration (e.g. no TLS backend).
    #[error("cannot build the outbound HTTP client")]
    Build(#[from] reqwest::Error),
}

/// Builds the hardened client: internal addresses are refused after DNS unless `allow` opens
/// them, and each request gives up after `timeout`.
pub fn hardened(allow: AllowList, timeout: Duration) -> Result<reqwest::Client, ClientError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(SafeResolver::new(allow)))
        .timeout(timeout)
        .user_agent(USER_AGENT)
        .build()?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server on loopback that answers `reply` to the first request and hands
    /// back that request's head; its URL is returned beside it.
    async fn answer_once(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before sending its request");
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&head).to_lowercase()
        });
        (url, served)
    }

    #[tokio::test]
    async fn the_hardened_client_refuses_a_name_that_resolves_to_loopback() {
        let client = hardened(AllowList::default(), Duration::from_secs(5)).unwrap();
        let err = client.get("http://localhost:9/").send().await.unwrap_err();
        let chain = format!("{err:?}");
        assert!(chain.contains("AllBlocked"), "{chain}");
    }

    #[tokio::test]
    async fn the_hardened_client_reports_a_redirect_instead_of_following_it() {
        let (url, served) = answer_once(
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let client = hardened(AllowList::default(), Duration::from_secs(5)).unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 302);
        let head = served.await.unwrap();
        assert!(
            head.contains(&format!("user-agent: {}", USER_AGENT.to_lowercase())),
            "{head}"
        );
    }

    #[tokio::test]
    async fn the_hardened_client_gives_up_after_its_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let client = hardened(AllowList::default(), Duration::from_millis(200)).unwrap();
        let err = client.get(&url).send().await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        drop(listener);
    }
}
