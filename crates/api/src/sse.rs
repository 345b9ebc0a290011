//! Server-sent event streams the API and the dashboard both serve.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::Event;
use futures_util::Stream;
use yatai_core::deploy::LogSource;

/// A deployment's log as events: the last `tail` lines, then (with
/// `follow`) each new line, until the server stops.
pub fn log_stream(
    book: Arc<dyn LogSource>,
    tail: usize,
    follow: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures_util::StreamExt;
    let live = follow.then(|| book.follow());
    let past = book.tail(tail);
    async_stream(past, live).take_until(Box::pin(crate::shutdown::stopping()))
}

fn async_stream(
    past: Vec<String>,
    live: Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures_util::StreamExt;
    let past = futures_util::stream::iter(past.into_iter().map(|l| Ok(Event::default().data(l))));
    let live = futures_util::stream::unfold(live, |rx| async move {
        let mut rx = rx?;
        let event = match rx.recv().await {
            Ok(line) => Event::default().data(line.as_ref()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                Event::default().comment(format!("{n} lines skipped (the reader was too slow)"))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), Some(rx)))
    });
    past.chain(live)
}
