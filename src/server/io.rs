//! The socket as the HTTP layer sees it: a write that makes no progress for `write_timeout`
//! fails the connection (so a caller that never reads cannot pin an answer in memory), and
//! bytes written are counted against the large answers the connection still owes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Answers at least this large count against `server.max_in_flight` until they are written:
/// smaller ones fit in the socket's buffer and cost little while a caller reads slowly.
pub const LARGE_ANSWER_BYTES: u64 = 64 * 1024;

/// What one connection still has to write of its large answers, and the in-flight permits
/// those answers hold meanwhile.
#[derive(Debug, Default)]
pub struct Account {
    pending: AtomicU64,
    permits: Mutex<Vec<OwnedSemaphorePermit>>,
}

impl Account {
    /// A large answer of `bytes` is about to be written: it holds an in-flight permit (if one
    /// is free: an answer already made is never refused) until its bytes are out.
    pub fn charge(&self, bytes: u64, permits: &Arc<Semaphore>) {
        self.pending.fetch_add(bytes, Ordering::AcqRel);
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            if let Ok(mut held) = self.permits.lock() {
                held.push(permit);
            }
        }
    }

    fn written(&self, n: usize) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let n = n as u64;
        let before = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            })
            .unwrap_or(0);
        if before <= n {
            if let Ok(mut held) = self.permits.lock() {
                held.clear();
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream whose writes fail after `write_timeout` without progress.
    pub struct Watched<I> {
        #[pin]
        inner: I,
        write_timeout: Duration,
        stalled: Option<Pin<Box<Sleep>>>,
        account: Arc<Account>,
    }
}

impl<I> Watched<I> {
    pub fn new(inner: I, write_timeout: Duration, account: Arc<Account>) -> Self {
        Watched {
            inner,
            write_timeout,
            stalled: None,
            account,
        }
    }
}

/// The error a stalled write ends with.
fn stalled_too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer took no bytes within server.write_timeout",
    )
}

/// Arms the stall timer on the first `Pending`, and fails once it has run out.
fn on_pending<T>(
    stalled: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    let sleep = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(stalled_too_long())),
        Poll::Pending => Poll::Pending,
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                *this.stalled = None;
                this.account.written(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => on_pending(this.stalled, *this.write_timeout, cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                *this.stalled = None;
                this.account.written(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => on_pending(this.stalled, *this.write_timeout, cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_flush(cx) {
            Poll::Ready(r) => {
                *this.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => on_pending(this.stalled, *this.write_timeout, cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_shutdown(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => on_pending(this.stalled, *this.write_timeout, cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_held_until_the_answer_is_written() {
        let permits = Arc::new(Semaphore::new(2));
        let account = Account::default();
        account.charge(100_000, &permits);
        assert_eq!(permits.available_permits(), 1);
        account.written(60_000);
        assert_eq!(permits.available_permits(), 1);
        account.written(60_000);
        assert_eq!(permits.available_permits(), 2);
        // No permit free: the answer still goes out, uncounted.
        let _all = permits.clone().try_acquire_many_owned(2).expect("permits");
        account.charge(100_000, &permits);
        account.written(100_000);
    }
}
