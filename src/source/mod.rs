//! Where frames come from: files (JSONL, CSV, NPY), the synthetic generator, and (in
//! `serve`) HTTP. Every source yields decoded frames in model feature order through
//! [`FrameSource`]; the dataflow's source operator assigns sequence numbers.

use crate::types::Frame;

pub mod decode;
pub mod file;
pub mod generator;

pub use decode::{
    decode_frame, inflate_if_gzip, DecodeError, Decoded, KeyPolicy, MissingKeys, UnknownKeys,
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

/// A source of frames, pulled by one worker.
pub trait FrameSource: Send {
    /// The next step of the source.
    fn pull(&mut self) -> Pull;

    /// Whether the frames this source yields already carry their sequence numbers
    /// (strictly increasing), as when an HTTP handler must answer with the seq before
    /// the dataflow sees the frame. Otherwise the dataflow numbers frames 0, 1, 2, ...
    fn assigns_seq(&self) -> bool {
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
