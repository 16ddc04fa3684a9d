//! Bridges between async gRPC streams and the blocking blob store: a writer that runs
//! [`BlobWriter`] on a blocking thread fed through a bounded channel (so a fast client cannot
//! make the controller buffer without limit), and a reader that streams a blob file in chunks.
use std::io::SeekFrom;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::blobs::{BlobError, BlobInfo, BlobStore, Expected};

/// Size of the chunks blobs are streamed in.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks queued between the network and the disk.
const QUEUE: usize = 8;

enum Msg {
    Chunk(Vec<u8>),
    Abort,
}

/// Digests the finished content must have (owned, to cross into the blocking thread).
#[derive(Debug, Clone, Default)]
pub struct ExpectedDigests {
    pub sha256: Option<String>,
    pub md5: Option<String>,
}

/// An upload into the blob store fed from async code.
pub struct StreamingWrite {
    tx: Option<mpsc::Sender<Msg>>,
    done: Option<JoinHandle<Result<Option<BlobInfo>, BlobError>>>,
    size: u64,
}

impl StreamingWrite {
    /// Starts writing a blob of at most `limit` bytes.
    pub fn start(
        store: &BlobStore,
        limit: u64,
        expected: ExpectedDigests,
    ) -> Result<StreamingWrite, BlobError> {
        let mut writer = store.begin_upload_with_limit(limit)?;
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let done = tokio::task::spawn_blocking(move || {
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Chunk(c) => writer.write_chunk(&c)?,
                    Msg::Abort => {
                        writer.abort();
                        return Ok(None);
                    }
                }
            }
            writer
                .finish_with(Expected {
                    sha256: expected.sha256.as_deref(),
                    md5: expected.md5.as_deref(),
                })
                .map(Some)
        });
        Ok(StreamingWrite {
            tx: Some(tx),
            done: Some(done),
            size: 0,
        })
    }

    /// Bytes accepted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Queues the next chunk; fails with the writer's error once it has failed (e.g. the
    /// size limit was passed).
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError> {
        let len = chunk.len() as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send(Msg::Chunk(chunk)).await.is_ok(),
            None => false,
        };
        if sent {
            self.size += len;
            return Ok(());
        }
        // The writer thread stopped: it failed; report why.
        self.tx = None;
        match self.join().await {
            Err(e) => Err(e),
            Ok(_) => Err(BlobError::WriterFailed),
        }
    }

    /// Flushes, verifies the expected digests and publishes the blob.
    pub async fn finish(mut self) -> Result<BlobInfo, BlobError> {
        self.tx = None;
        self.join().await?.ok_or(BlobError::WriterFailed)
    }

    /// Discards everything written.
    pub async fn abort(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Abort).await;
        }
        let _ = self.join().await;
    }

    async fn join(&mut self) -> Result<Option<BlobInfo>, BlobError> {
        match self.done.take() {
            Some(handle) => handle.await.unwrap_or(Err(BlobError::WriterFailed)),
            None => Err(BlobError::WriterFailed),
        }
    }
}

/// Streams the file at `path` from `offset` in [`CHUNK_BYTES`] pieces. A read error ends the
/// stream with that error.
pub fn read_chunks(path: PathBuf, offset: u64) -> ReceiverStream<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let result: std::io::Result<()> = async {
            let mut file = tokio::fs::File::open(&path).await?;
            file.seek(SeekFrom::Start(offset)).await?;
            loop {
                let mut buf = vec![0u8; CHUNK_BYTES];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(());
                }
                buf.truncate(filled);
                if tx.send(Ok(buf)).await.is_err() {
                    return Ok(()); // the receiver went away
                }
            }
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_streamed_blob_is_published_and_read_back_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let content: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
        let mut w = StreamingWrite::start(&store, u64::MAX, ExpectedDigests::default()).unwrap();
        for piece in content.chunks(100_000) {
            w.write(piece.to_vec()).await.unwrap();
        }
        assert_eq!(w.size(), content.len() as u64);
        let info = w.finish().await.unwrap();
        let path = store.path_of(&info.sha256).unwrap();
        let mut got = Vec::new();
        let mut chunks = read_chunks(path, 5);
        while let Some(c) = chunks.next().await {
            let c = c.unwrap();
            assert!(c.len() <= CHUNK_BYTES);
            got.extend(c);
        }
        assert_eq!(got, content[5..]);
    }

    #[tokio::test]
    async fn the_size_limit_stops_the_writer_and_a_bad_checksum_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = StreamingWrite::start(&store, 10, ExpectedDigests::default()).unwrap();
        let mut failed = None;
        for _ in 0..QUEUE * 4 {
            if let Err(e) = w.write(vec![1; 8]).await {
                failed = Some(e);
                break;
            }
        }
        assert!(
            matches!(failed, Some(BlobError::TooLarge { limit: 10 })),
            "{failed:?}"
        );

        let expected = ExpectedDigests {
            sha256: Some("00".repeat(32)),
            md5: None,
        };
        let mut w = StreamingWrite::start(&store, u64::MAX, expected).unwrap();
        w.write(b"hello".to_vec()).await.unwrap();
        let err = w.finish().await.unwrap_err();
        assert!(matches!(err, BlobError::ChecksumMismatch { .. }), "{err:?}");
        assert!(store.list().unwrap().is_empty());

        let mut w = StreamingWrite::start(&store, u64::MAX, ExpectedDigests::default()).unwrap();
        w.write(b"discard me".to_vec()).await.unwrap();
        w.abort().await;
        assert!(store.list().unwrap().is_empty());
    }
}
