//! The server's HTTP/1.1 connections: what `axum::serve` does, plus the limits a port open to a
//! network needs, so that slow or stuck clients cannot hold the server:
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub send_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains the connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
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
        let (app, mut stopping) = (app.clone(), stopping.clone());
        connections.spawn(async move {
            let _permit = permit;
            let progress = Arc::new(Progress::default());
            let sending = progress.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                let req = req.map(|body| Body::new(IdleTimeout::new(body, limits.body_idle_timeout)));
                let (app, sending) = (app.clone(), sending.clone());
                async move {
                    let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
                    Ok::<_, Infallible>(resp.map(|body| Body::new(Watched::new(body, sending))))
                }
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
struct Watched {
    inner: Body,
    progress: Arc<Progress>,
}

impl Watched {
    fn new(inner: Body, progress: Arc<Progress>) -> Self {
        progress.moved();
        Watched { inner, progress }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.progress.done();
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // The body is polled with a waker that starts the clock when the body has bytes again:
        // from then on, waiting is the client's doing.
        let waker =
            std::task::Waker::from(Arc::new(Restart { progress: self.progress.clone(), next: cx.waker().clone() }));
        let polled = Pin::new(&mut self.inner).poll_frame(&mut Context::from_waker(&waker));
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
struct IdleTimeout {
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
    type Error = Box<dyn std::error::Error + Send + Sync>;

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
