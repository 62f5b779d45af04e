//! The hardened HTTP client for requests to user-given URLs: no proxy (a proxy would resolve names
//! past the [`SafeResolver`]), no redirects (a 3xx is answered as it is: its target is a new,
//! unchecked URL), the safe resolver with the operator's [`AllowList`], one deadline per request
//! covering the connection, the answer and its body, a `taskfleet/<version>` user agent and
//! `Accept: */*` (unless the caller sends its own). HTTP/1.1 over TCP, or over TLS (rustls, the
//! webpki roots) for `https`; connections are kept and reused per host. Checking each URL before
//! sending ([`super::ssrf::check_url`]) stays the caller's job: the client only sees addresses.
//!
//! Built on hyper's HTTP/1.1 connections directly rather than on reqwest: the relay makes one
//! request per delivery, and reqwest's layers around hyper's pooled client (a redirect policy
//! that parses the URL again on each request and on each answer, a retry policy that copies the
//! headers, boxing) were ~12 % of the relay's CPU at 15,000 deliveries/s (docs/benchmarks.md).
//! The connections are kept by `pool.rs`, not by hyper-util's pool (why: there).

use super::pool::{Pool, PoolError, Sender};
use super::ssrf::{AllowList, SafeResolver, SsrfError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use std::time::Duration;

/// The `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("taskfleet/", env!("CARGO_PKG_VERSION"));

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// rustls refused the TLS setup (no protocol version its crypto provider supports).
    #[error("cannot set up TLS for the outbound HTTP client")]
    Tls(#[source] rustls::Error),
}

/// Why a request got no answer. None of these carries the URL (webhook URLs carry tokens).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer (with its body) within the client's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request could not be made from what was given (a header value that is not one).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No connection could be made (or the safe resolver refused every address).
    #[error(transparent)]
    Connect(#[from] PoolError),
    /// The connection failed before the answer's head.
    #[error("no answer: {0}")]
    Request(#[source] hyper::Error),
    /// The answer's body broke off.
    #[error("reading the answer: {0}")]
    Body(#[source] hyper::Error),
}

impl SendError {
    /// The request was refused before any connection: every address its host resolves to is
    /// internal (the [`SafeResolver`]). Sending again cannot help.
    pub fn refused_by_ssrf(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(ssrf) = e.downcast_ref::<SsrfError>() {
                return ssrf.is_refusal();
            }
            source = e.source();
        }
        false
    }

    /// Nothing was sent, and sending again cannot help: an invalid request or a refusal.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Invalid(_)) || self.refused_by_ssrf()
    }
}

/// An answer, its body read up to a limit.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The answer's headers.
    pub headers: http::HeaderMap,
    /// The body's first bytes (at most the limit asked for; the rest is dropped).
    pub body: Vec<u8>,
}

/// The hardened client (cheap to clone: the kept connections are shared).
#[derive(Debug, Clone)]
pub struct HardenedClient {
    pool: Pool,
    timeout: Duration,
}

/// Builds the hardened client: internal addresses are refused after DNS unless `allow` opens
/// them, and each request gives up after `timeout`.
pub fn hardened(allow: AllowList, timeout: Duration) -> Result<HardenedClient, ClientError> {
    let mut tcp = HttpConnector::new_with_resolver(SafeResolver::new(allow));
    // `https` URLs go through the TLS layer, which hands the plain connector the address.
    tcp.enforce_http(false);
    // One small request at a time per connection: send it now, not after Nagle's delay.
    tcp.set_nodelay(true);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(ClientError::Tls)?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(HardenedClient {
        pool: Pool::new(tls),
        timeout,
    })
}

impl HardenedClient {
    /// `POST`s `body` to `url` with `headers` (besides the user agent), and reads at most
    /// `limit` bytes of the answer's body, all within the client's timeout.
    pub async fn post(
        &self,
        url: &url::Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        limit: usize,
    ) -> Result<Answer, SendError> {
        let request = build_request(url, headers, body)?;
        let target = request.uri().clone();
        let request = origin_form(request);
        let exchange = async {
            let (sender, answer) = self.send(&target, request).await?;
            let (head, body) = answer.into_parts();
            let (body, to_the_end) = read_limited(body, limit).await?;
            // A connection whose answer was not read to its end is closed, not kept.
            if to_the_end {
                self.pool.checkin(&target, sender).await;
            }
            Ok(Answer {
                status: head.status.as_u16(),
                headers: head.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(SendError::Timeout(self.timeout)),
        }
    }
}

impl HardenedClient {
    /// Sends `request` (for `target`) on a kept connection, or a new one; a kept connection
    /// that turns out closed before the request went out is replaced once. Answers the
    /// connection used with the answer's head.
    async fn send(
        &self,
        target: &http::Uri,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(Sender, http::Response<hyper::body::Incoming>), SendError> {
        let (mut sender, kept) = self.pool.checkout(target).await?;
        match sender.try_send_request(request).await {
            Ok(answer) => Ok((sender, answer)),
            Err(mut e) => match e.take_message() {
                Some(request) if kept => {
                    let mut fresh = self.pool.connect(target).await?;
                    let answer = fresh.send_request(request).await;
                    Ok((fresh, answer.map_err(SendError::Request)?))
                }
                _ => Err(SendError::Request(e.into_error())),
            },
        }
    }
}

/// `request` as it goes on its own connection: its path and query as the target, and `Host`
/// from its URI (a URI without authority is left as it is).
fn origin_form(mut request: http::Request<Full<Bytes>>) -> http::Request<Full<Bytes>> {
    let uri = request.uri().clone();
    let Some(authority) = uri.authority() else {
        return request;
    };
    if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
        request.headers_mut().insert(http::header::HOST, host);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(path) = path.parse() {
        *request.uri_mut() = path;
    }
    request
}

/// The request: method, URI, user agent, `headers`, body. Credentials in the URL
/// (`https://user:pass@host/…`) go as a Basic `Authorization` header, not in the request.
fn build_request(
    url: &url::Url,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<http::Request<Full<Bytes>>, SendError> {
    let credentials = basic_auth(url);
    let target = match credentials {
        Some(_) => {
            let mut bare = url.clone();
            // Only fails for URLs that cannot have credentials, which this one had.
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
            std::borrow::Cow::Owned(bare)
        }
        None => std::borrow::Cow::Borrowed(url),
    };
    let uri: http::Uri = target
        .as_str()
        .parse()
        .map_err(|_| SendError::Invalid("the URL is not a valid request target".into()))?;
    // Ours unless the caller names its own (a webhook's extra headers may): `User-Agent`,
    // `Authorization` from the URL's credentials, and `Accept: */*` as curl and reqwest send it
    // (some gateways refuse a request without one).
    let named = |h: &http::header::HeaderName| headers.iter().any(|(n, _)| h == n);
    let mut request = http::Request::post(uri);
    if !named(&http::header::USER_AGENT) {
        request = request.header(http::header::USER_AGENT, USER_AGENT);
    }
    if let Some(credentials) = credentials.filter(|_| !named(&http::header::AUTHORIZATION)) {
        request = request.header(http::header::AUTHORIZATION, credentials);
    }
    if !named(&http::header::ACCEPT) {
        request = request.header(http::header::ACCEPT, "*/*");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::new(Bytes::from(body)))
        // Names the header (ours) but never shows its value, which may be a token.
        .map_err(|e| SendError::Invalid(format!("a request header is not valid: {e}")))
}

/// `Basic <base64 of user:password>` for a URL that carries credentials (percent-decoded).
fn basic_auth(url: &url::Url) -> Option<String> {
    use base64::Engine;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or_default())
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    Some(format!("Basic {encoded}"))
}

/// The first `limit` bytes of `body` (read to its end or to the limit), and whether it was read
/// to its end (its connection can then carry another request).
async fn read_limited(
    mut body: hyper::body::Incoming,
    limit: usize,
) -> Result<(Vec<u8>, bool), SendError> {
    use hyper::body::Body;
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        let Some(frame) = body.frame().await else {
            return Ok((bytes, true));
        };
        if let Ok(data) = frame.map_err(SendError::Body)?.into_data() {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok((bytes, body.is_end_stream()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server on loopback that answers `reply` to the first request and hands
    /// back that request's head; its URL is returned beside it.
    async fn answer_once(reply: &'static str) -> (url::Url, tokio::task::JoinHandle<String>) {
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
        (url.parse().unwrap(), served)
    }

    fn loopback_client(timeout: Duration) -> HardenedClient {
        hardened(AllowList::new(["127.0.0.1/32"]).unwrap(), timeout).unwrap()
    }

    #[tokio::test]
    async fn the_hardened_client_refuses_a_name_that_resolves_to_loopback() {
        let client = hardened(AllowList::default(), Duration::from_secs(5)).unwrap();
        let url = "http://localhost:9/".parse().unwrap();
        let err = client.post(&url, &[], Vec::new(), 16).await.unwrap_err();
        assert!(err.refused_by_ssrf(), "{err:?}");
        assert!(err.is_permanent());
    }

    #[tokio::test]
    async fn the_hardened_client_reports_a_redirect_instead_of_following_it() {
        let (url, served) = answer_once(
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let client = loopback_client(Duration::from_secs(5));
        let answer = client.post(&url, &[], b"{}".to_vec(), 16).await.unwrap();
        assert_eq!(answer.status, 302);
        let head = served.await.unwrap();
        assert!(
            head.contains(&format!("user-agent: {}", USER_AGENT.to_lowercase())),
            "{head}"
        );
    }

    #[tokio::test]
    async fn the_hardened_client_sends_the_headers_and_body_it_is_given() {
        let (url, served) = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let client = loopback_client(Duration::from_secs(5));
        let headers = [
            ("content-type", "application/json"),
            ("webhook-id", "msg_1"),
        ];
        let answer = client
            .post(&url, &headers, b"{}".to_vec(), 16)
            .await
            .unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok"[..]));
        let head = served.await.unwrap();
        assert!(head.starts_with("post / http/1.1"), "{head}");
        assert!(head.contains("webhook-id: msg_1"), "{head}");
        assert!(head.contains("content-length: 2"), "{head}");
        assert!(head.contains("accept: */*"), "{head}");
    }

    #[tokio::test]
    async fn a_callers_own_accept_header_replaces_the_default_one() {
        let (url, served) = answer_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        let client = loopback_client(Duration::from_secs(5));
        let headers = [("Accept", "application/json")];
        client.post(&url, &headers, Vec::new(), 16).await.unwrap();
        let head = served.await.unwrap();
        assert!(head.contains("accept: application/json"), "{head}");
        assert!(!head.contains("*/*"), "{head}");
    }

    #[tokio::test]
    async fn a_callers_own_user_agent_and_authorization_replace_the_default_ones() {
        let (url, served) = answer_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        let with = format!("http://user:pass@{}/in", url.authority());
        let client = loopback_client(Duration::from_secs(5));
        let headers = [
            ("User-Agent", "gateway-probe/1"),
            ("Authorization", "Bearer t"),
        ];
        let with: url::Url = with.parse().unwrap();
        client.post(&with, &headers, Vec::new(), 16).await.unwrap();
        let head = served.await.unwrap();
        assert!(head.contains("user-agent: gateway-probe/1"), "{head}");
        assert!(head.contains("authorization: bearer t"), "{head}");
        assert_eq!(head.matches("user-agent:").count(), 1, "{head}");
        assert_eq!(head.matches("authorization:").count(), 1, "{head}");
    }

    /// A loopback HTTP/1.1 server that serves one connection at a time, keeping each open for
    /// the next request until the client closes it (Python's single-threaded `HTTPServer`):
    /// answers `answer` to every request; counts the connections it accepted.
    async fn one_connection_at_a_time(answer: &'static [u8]) -> (url::Url, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/in", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                conn.set_nodelay(true).unwrap();
                while let Some(body_len) = read_head(&mut conn).await {
                    let mut body = vec![0u8; body_len];
                    if conn.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    // Head and body in two writes, as Python's `http.server` sends them.
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if conn.write_all(answer).await.is_err() {
                        break;
                    }
                }
            }
        });
        (url.parse().unwrap(), accepted)
    }

    /// Reads one request head from `conn`: its `content-length`, or `None` at the end.
    async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<usize> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        let length = head.lines().find_map(|l| l.strip_prefix("content-length:"));
        Some(length.map_or(0, |v| v.trim().parse().unwrap_or(0)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_one_after_another_reach_a_server_that_serves_one_connection_at_a_time() {
        let (url, accepted) = one_connection_at_a_time(b"ok").await;
        let client = loopback_client(Duration::from_secs(2));
        for i in 0..50 {
            let answer = client.post(&url, &[], b"{}".to_vec(), 16).await;
            let answer = answer.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(answer.status, 200, "request {i}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept connection");
    }

    #[tokio::test]
    async fn an_answer_longer_than_the_limit_leaves_its_connection_closed_and_the_next_one_new() {
        static LONG: [u8; 1 << 20] = [b'x'; 1 << 20];
        let (url, accepted) = one_connection_at_a_time(&LONG).await;
        let client = loopback_client(Duration::from_secs(2));
        for i in 0..3 {
            let answer = client.post(&url, &[], b"{}".to_vec(), 16).await;
            let answer = answer.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(answer.body, [b'x'; 16], "request {i}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "one connection each");
    }

    #[tokio::test]
    async fn credentials_in_the_url_go_as_basic_auth_and_not_in_the_request_line() {
        let (url, served) = answer_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        let with = format!("http://hook%40user:s3cr%3At@{}/in", url.authority());
        let client = loopback_client(Duration::from_secs(5));
        let answer = client
            .post(&with.parse().unwrap(), &[], Vec::new(), 16)
            .await;
        assert_eq!(answer.unwrap().status, 204);
        let head = served.await.unwrap();
        // base64("hook@user:s3cr:t")
        assert!(
            head.contains("authorization: basic ag9va0b1c2vyonmzy3i6da=="),
            "{head}"
        );
        assert!(head.starts_with("post /in http/1.1"), "{head}");
        assert!(!head.contains("s3cr"), "{head}");
    }

    #[tokio::test]
    async fn the_hardened_client_reads_no_more_of_a_body_than_asked() {
        let (url, _served) =
            answer_once("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
        let client = loopback_client(Duration::from_secs(5));
        let answer = client.post(&url, &[], Vec::new(), 4).await.unwrap();
        assert_eq!(answer.body, b"0123");
    }

    #[tokio::test]
    async fn the_hardened_client_gives_up_after_its_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let client = loopback_client(Duration::from_millis(200));
        let err = client
            .post(&url.parse().unwrap(), &[], Vec::new(), 16)
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::Timeout(_)), "{err:?}");
        assert!(!err.is_permanent());
        drop(listener);
    }

    #[tokio::test]
    async fn an_https_url_is_spoken_to_in_tls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/", listener.local_addr().unwrap());
        let first_byte = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            byte[0]
        });
        let client = loopback_client(Duration::from_secs(5));
        let err = client
            .post(&url.parse().unwrap(), &[], Vec::new(), 16)
            .await
            .unwrap_err();
        // A TLS record of type handshake (the ClientHello), not `POST`.
        assert_eq!(first_byte.await.unwrap(), 0x16);
        assert!(!err.is_permanent(), "{err:?}");
    }

    #[tokio::test]
    async fn a_header_value_that_is_not_one_is_a_permanent_error_without_the_value() {
        let client = loopback_client(Duration::from_secs(5));
        let url = "http://127.0.0.1:9/".parse().unwrap();
        let err = client
            .post(
                &url,
                &[("authorization", "Bearer s3cret\n")],
                Vec::new(),
                16,
            )
            .await
            .unwrap_err();
        assert!(err.is_permanent(), "{err:?}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
