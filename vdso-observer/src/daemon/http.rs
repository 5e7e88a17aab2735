//! A small HTTP/1.1 endpoint for direct scraping: `GET /metrics` and `GET /healthz`.
//! One request per connection; anything else gets 404 or 405.
//!
//! Any local user can connect, so no client may hold the daemon: at most
//! [`MAX_CONNECTIONS`] at once (a new one evicts the oldest, which has waited
//! longest: a client that does not read its answer), each with one deadline
//! for reading the request *and* writing the answer, and every `/metrics`
//! answer shares the one published body. A scrape is accepted at once
//! however many clients hang.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// Connections served at once; a new one evicts the oldest.
pub const MAX_CONNECTIONS: usize = 128;
/// From accept to the last byte written: a client that does not read its
/// answer is dropped then.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// What the endpoint serves, updated by the daemon after every window.
#[derive(Debug)]
pub struct Published {
    /// Shared by every answer in flight: a slow client holds a reference, not a copy.
    pub metrics: Arc<str>,
    pub last_collection: Option<Instant>,
    /// A collection older than this is unhealthy.
    pub stale_after: Duration,
}

pub type Shared = Arc<Mutex<Published>>;

pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn serve(listener: TcpListener, shared: Shared) {
    let mut live: std::collections::VecDeque<tokio::task::JoinHandle<()>> = Default::default();
    let mut evicted = 0u64;
    let mut accept_errors = AcceptErrors::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                live.retain(|task| !task.is_finished());
                if live.len() >= MAX_CONNECTIONS
                    && let Some(oldest) = live.pop_front()
                {
                    oldest.abort();
                    evicted += 1;
                    if evicted.is_power_of_two() {
                        log::info!(
                            "http: {evicted} connections evicted so far: more than \
                             {MAX_CONNECTIONS} clients at once, the oldest not reading"
                        );
                    }
                }
                let shared = shared.clone();
                live.push_back(tokio::spawn(async move {
                    let answered =
                        tokio::time::timeout(CONNECTION_DEADLINE, handle(stream, shared)).await;
                    match answered {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => log::debug!("http: {err}"),
                        Err(_) => {
                            log::debug!("http: a client took over {CONNECTION_DEADLINE:?}: dropped")
                        }
                    }
                }));
            }
            Err(err) => {
                accept_errors.note(&err);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Accept failures (out of descriptors, say) are logged once a minute with
/// how many there were, not every 100 ms.
#[derive(Default)]
struct AcceptErrors {
    since_said: u64,
    said: Option<Instant>,
}

impl AcceptErrors {
    fn note(&mut self, err: &std::io::Error) {
        self.since_said += 1;
        if self
            .said
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            log::warn!(
                "http: accept failed {} times since last said: {err}",
                self.since_said
            );
            self.since_said = 0;
            self.said = Some(Instant::now());
        }
    }
}

async fn handle(mut stream: TcpStream, shared: Shared) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let head_complete = tokio::time::timeout(CONNECTION_DEADLINE, async {
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
    let (status, content_type, body): (_, _, Arc<str>) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let published = shared.lock().expect("published state");
            ("200 OK", METRICS_CONTENT_TYPE, published.metrics.clone())
        }
        ("GET" | "HEAD", "/healthz") => {
            let published = shared.lock().expect("published state");
            match published.last_collection {
                Some(at) if at.elapsed() <= published.stale_after => {
                    ("200 OK", "text/plain; charset=utf-8", Arc::from("ok\n"))
                }
                Some(at) => (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    Arc::from(format!(
                        "stale: last collection {:.0} s ago\n",
                        at.elapsed().as_secs_f64()
                    )),
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    Arc::from("starting: no collection yet\n"),
                ),
            }
        }
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            Arc::from(
                "<html><body><h1>vdso-observer</h1><p><a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a></p></body></html>\n",
            ),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            Arc::from("not found\n"),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            Arc::from("only GET and HEAD\n"),
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
