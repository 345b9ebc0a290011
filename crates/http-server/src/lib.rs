//! The HTTP/1.1 connections of yatai's ports, the API's and each deployment's endpoint: what
//! `axum::serve` does, plus the limits a port open to a network needs, so that slow or stuck
//! clients cannot hold the server (every port is served by the one `yatai serve` process, so a
//! deployment's port left open to slowloris would take the API's descriptors too):
//! - at most `max_connections` at once (the rest wait in the listen backlog);
//! - a request's head must arrive within `header_timeout` (slowloris);
//! - a request body that sends nothing for `body_idle_timeout` fails (a stalled upload);
//! - a response the client takes nothing of for `send_timeout` ends the connection (a download
//!   to a client that stopped reading: the socket's buffers stay full), and so do bytes a
//!   vanished client never acknowledges (`TCP_USER_TIMEOUT`).
//!
//! On shutdown it stops accepting, lets each connection finish its request, and waits for them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub send_timeout: Duration,
}

impl Default for Limits {
    /// The defaults of `yatai serve`'s flags.
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(120),
        }
    }
}

/// Serves `handle` on `listener` until `shutdown` completes, then drains the connections.
/// `handle` gets each request (its body fails after `body_idle_timeout` without bytes) and the
/// client's address.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    handle: H,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request<IdleTimeout>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for connections to end.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        set_send_timeout(&stream, limits.send_timeout);
        let (handle, mut stopping) = (handle.clone(), stopping.clone());
        connections.spawn(async move {
            let _permit = permit;
            let progress = Arc::new(Progress::default());
            let sending = progress.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let req = req.map(|body| IdleTimeout::new(body, limits.body_idle_timeout));
                let (response, sending) = (handle(req, remote), sending.clone());
                async move { Ok::<_, Infallible>(response.await.map(|body| Watched::new(body, sending))) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            let mut check = tokio::time::interval((limits.send_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = stopping.wait_for(|s| *s), if !draining => {
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                    _ = check.tick() => if progress.stalled_for(limits.send_timeout) {
                        tracing::info!(client = %remote, "closing a connection whose client takes nothing of its response");
                        return;
                    },
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// When the response being sent last moved: hyper asks its body for more only when the socket
/// takes bytes, so a body that handed over bytes and was not asked again for a while means a
/// client that stopped reading. A body waiting on the server's side (a quiet log stream) counts
/// as not in flight.
#[derive(Default)]
struct Progress {
    /// Milliseconds since `base` when the body was last asked for bytes; 0: no body in flight.
    last: std::sync::atomic::AtomicU64,
    base: std::sync::OnceLock<std::time::Instant>,
}

impl Progress {
    fn now(&self) -> u64 {
        self.base.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
    }
    fn moved(&self) {
        self.last.store(self.now(), std::sync::atomic::Ordering::Relaxed);
    }
    fn done(&self) {
        self.last.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    fn stalled_for(&self, limit: Duration) -> bool {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        last != 0 && self.now().saturating_sub(last) > limit.as_millis() as u64
    }
}

/// A response body that reports to its connection's [`Progress`].
struct Watched<B> {
    inner: Pin<Box<B>>,
    progress: Arc<Progress>,
}

impl<B> Watched<B> {
    fn new(inner: B, progress: Arc<Progress>) -> Self {
        progress.moved();
        Watched { inner: Box::pin(inner), progress }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        self.progress.done();
    }
}

impl<B> HttpBody for Watched<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // The body is polled with a waker that starts the clock when the body has bytes again:
        // from then on, waiting is the client's doing.
        let waker =
            std::task::Waker::from(Arc::new(Restart { progress: self.progress.clone(), next: cx.waker().clone() }));
        let polled = self.inner.as_mut().poll_frame(&mut Context::from_waker(&waker)).map_err(Into::into);
        match &polled {
            // Bytes handed to hyper: it asks again as soon as the socket takes them.
            Poll::Ready(Some(_)) => self.progress.moved(),
            // Waiting on the server's side (a file being read, a log stream with nothing new),
            // or done: not the client's doing.
            Poll::Pending | Poll::Ready(None) => self.progress.done(),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wakes hyper when a response body has bytes again, and starts the clock on the client.
struct Restart {
    progress: Arc<Progress>,
    next: std::task::Waker,
}

impl std::task::Wake for Restart {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.progress.moved();
        self.next.wake_by_ref();
    }
}

/// `TCP_USER_TIMEOUT`: the kernel ends the connection when sent bytes stay unacknowledged
/// this long (a client that stopped reading, or vanished).
fn set_send_timeout(stream: &tokio::net::TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let ms = timeout.as_millis().min(u32::MAX as u128) as libc::c_uint;
    // SAFETY: setsockopt on a socket this function borrows, with a pointer to a live c_uint.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set TCP_USER_TIMEOUT");
    }
}

/// A request body that fails when no bytes come for `idle` (counted from the first read: a
/// handler that reads the body late is not the client's fault).
pub struct IdleTimeout {
    inner: Incoming,
    idle: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeout {
    fn new(inner: Incoming, idle: Duration) -> Self {
        IdleTimeout { inner, idle, sleep: None }
    }
}

impl HttpBody for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let idle = self.idle;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "the client sent nothing for {idle:?} in the middle of the request body"
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// A server answering `ok` after reading the whole request body; its address and a stop.
    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = |req: Request<IdleTimeout>, _peer: SocketAddr| async move {
            let status = match req.into_body().collect().await {
                Ok(_) => 200,
                Err(_) => 400,
            };
            Response::builder().status(status).body(Full::new(Bytes::from_static(b"ok"))).unwrap()
        };
        tokio::spawn(serve(listener, handle, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    fn quick() -> Limits {
        Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            body_idle_timeout: Duration::from_millis(300),
            send_timeout: Duration::from_secs(5),
        }
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_head_that_never_ends_is_cut_after_the_header_timeout() {
        let (addr, _stop) = start(quick()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = Instant::now();
        until_closed(&mut s).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(5), "closed after {took:?}");
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_the_request() {
        let (addr, _stop) = start(quick()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
        let answer = until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let (addr, _stop) = start(Limits { header_timeout: Duration::from_secs(2), ..quick() }).await;
        // Four silent clients hold every slot.
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Accepted in order: the fifth waits in the backlog behind them.
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        fifth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut buf)).await;
        assert!(early.is_err(), "the fifth connection was served while four held every slot");
        // The silent ones are cut after the header timeout; then the fifth is served.
        let answer = until_closed(&mut fifth).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(silent);
    }
}
