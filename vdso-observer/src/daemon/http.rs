//! A small HTTP/1.1 endpoint for direct scraping: `GET /metrics` and `GET /healthz`.
//! One request per connection; anything else gets 404 or 405.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// What the endpoint serves, updated by the daemon after every window.
#[derive(Debug)]
pub struct Published {
    pub metrics: String,
    pub last_collection: Option<Instant>,
    /// A collection older than this is unhealthy.
    pub stale_after: Duration,
}

pub type Shared = Arc<Mutex<Published>>;

pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn serve(listener: TcpListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(err) = handle(stream, shared).await {
                        log::debug!("http: {err}");
                    }
                });
            }
            Err(err) => {
                log::warn!("http: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, shared: Shared) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let head_complete = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            request.extend_from_slice(&buf[..n]);
            if request.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if request.len() > 16 * 1024 {
                return Ok(false);
            }
        }
    })
    .await;
    if !matches!(head_complete, Ok(Ok(true))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let published = shared.lock().expect("published state");
            ("200 OK", METRICS_CONTENT_TYPE, published.metrics.clone())
        }
        ("GET" | "HEAD", "/healthz") => {
            let published = shared.lock().expect("published state");
            match published.last_collection {
                Some(at) if at.elapsed() <= published.stale_after => {
                    ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned())
                }
                Some(at) => (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    format!("stale: last collection {:.0} s ago\n", at.elapsed().as_secs_f64()),
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    "starting: no collection yet\n".to_owned(),
                ),
            }
        }
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            "<html><body><h1>vdso-observer</h1><p><a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a></p></body></html>\n".to_owned(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
