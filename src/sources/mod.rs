//! Where frames come from: files (JSONL, CSV, NPY), the synthetic generator, and (in
//! `serve`) HTTP. Every source yields decoded frames in model feature order through
//! [`FrameSource`]; the dataflow's source operator numbers them as the source's
//! [`Sequencing`] says. Any worker may read a source of its own.

use crate::types::Frame;

pub mod decode;
pub mod file;
pub mod generator;
pub mod http;
pub mod kafka;
pub mod ring;

pub use decode::{
    decode_body, decode_frame, inflate_if_gzip, with_inflated, BodyKind, DecodeError, Decoded,
    KeyPolicy, MissingKeys, UnknownKeys, ENTITY_KEYS,
};
pub use file::{read_matrix, FrameWriter, Matrix};
pub use generator::{AnomalyKind, Generator, GeneratorConfig, GeneratorSource, Injection};

/// One step of a source.
#[derive(Debug)]
pub enum Pull {
    /// A decoded frame; its `seq` is assigned by the dataflow, whatever it holds here.
    Frame(Frame),
    /// A record that could not be decoded: reported and skipped, the stream goes on.
    Bad(SourceError),
    /// Nothing available right now (push sources); ask again later.
    Idle,
    /// The source is exhausted.
    Done,
}

/// How the frames of a source get their sequence numbers (their logical times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sequencing {
    /// The dataflow numbers frames 0, 1, 2, ... in pull order. Only for a source that is
    /// the only one in the cluster.
    #[default]
    Dense,
    /// Frames already carry strictly increasing sequence numbers, as when an HTTP handler
    /// must answer with the seq before the dataflow sees the frame. Only one source.
    Assigned,
    /// Several workers read at the same pace: frame `n` of worker `i` (of `peers`) is
    /// numbered `n * peers + i`, so the frames keep one global order without any
    /// coordination (a ring of frames dealt out round-robin, as `bench` does).
    Interleaved,
    /// Several workers read at unrelated paces (Kafka partitions): a frame is stamped with
    /// the wall clock in Unix microseconds, made strictly increasing on each worker and
    /// unique across workers. While the source is idle its worker's time follows the
    /// clock, so a worker with nothing to read never holds the others back.
    Clock,
    /// Several ingest points (the HTTP queues of a cluster's processes) number their own
    /// frames before the dataflow sees them, because a handler answers with the seq: from
    /// the wall clock in Unix microseconds, strictly increasing, in the source's own
    /// residue class modulo the number of ingest points, so no two share a seq. While idle
    /// the source's time follows the clock up to [`FrameSource::idle_floor`], so an idle
    /// ingest point never holds the others back.
    AssignedClock,
}

/// A source of frames, pulled by one worker.
pub trait FrameSource: Send {
    /// The next step of the source. Must not block: a push source answers
    /// [`Pull::Idle`] when nothing is there.
    fn pull(&mut self) -> Pull;

    /// How this source's frames are numbered.
    fn sequencing(&self) -> Sequencing {
        Sequencing::Dense
    }

    /// Under [`Sequencing::AssignedClock`], asked while the source is idle: the least seq
    /// it may still give a frame, promising that every later frame has a seq at or above
    /// it (`None`: no promise yet, for instance a frame is queued but not yet pulled).
    fn idle_floor(&mut self) -> Option<crate::types::Seq> {
        None
    }

    /// The first `n` frames this source yielded ([`Pull::Frame`], in pull order) have
    /// their verdicts on every worker and their alerts were handed to the sinks. Called
    /// with growing `n` while the run goes on, and once more with the total at its end;
    /// a source with an upstream to acknowledge (Kafka offsets) does it here.
    fn settled(&mut self, n: u64) {
        let _ = n;
    }

    /// Offers the source a `waker` to call, from any thread, whenever it may have more to
    /// give after answering [`Pull::Idle`]: a frame arrived, or its input ended. A source
    /// that will call it returns `true`, and its worker then sleeps while the source is
    /// idle instead of asking again; one that returns `false` (the default) is asked again
    /// about every millisecond while idle.
    fn wake_with(&mut self, waker: std::task::Waker) -> bool {
        let _ = waker;
        false
    }
}

/// A record that could not be turned into a frame.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct SourceError {
    /// Where the record was: file and line, HTTP request, Kafka partition and offset.
    pub origin: String,
    /// What is wrong with it.
    pub problem: String,
}
