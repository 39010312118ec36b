//! How a change reaches every worker of every process, as messages on the dataflow's
//! control stream ([`crate::ops::control`]), which is broadcast to every worker:
//!
//! 1. The process that was asked validates the change itself (loading a new model) and
//!    sends [`Msg::Request`].
//! 2. A model change in a cluster needs every process: each other process loads the
//!    directory itself, off its workers, and answers [`Msg::Vote`]. Worker 0 counts them.
//! 3. Worker 0 alone sends [`Msg::Commit`] (or, if any process refused, [`Msg::Abort`]
//!    with its reasons, and the old model stays everywhere). Commits come from one
//!    sender, so every worker sees them in the same order and counts the same versions.
//!    A commit is stamped with the frames' frontier at worker 0: it applies from that
//!    frame on.
//! 4. Each process answers [`Msg::Ack`] once all its workers have the commit; the asking
//!    process answers its client once every process did.
//!
//! Everything here runs once per change, never per frame.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use timely::scheduling::SyncActivator;
use tokio::sync::oneshot;

use super::{Change, Controls, Knobs, Shape};
use crate::model::Model;
use crate::types::Seq;

/// A change's identity: the process that was asked, and its count there.
pub type Id = (u32, u64);

/// A message on the control stream (see the module's docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// A process was asked for `change` and validated it.
    Request {
        /// The change.
        id: Id,
        /// What it changes.
        change: Change,
    },
    /// A process loaded a requested model (`refusal: None`) or could not.
    Vote {
        /// The change.
        id: Id,
        /// Why this process cannot make the change.
        refusal: Option<String>,
    },
    /// Worker 0: every worker applies `change` from the message's time (frame) on.
    Commit {
        /// The change.
        id: Id,
        /// What it changes.
        change: Change,
    },
    /// Worker 0: a process refused the change; nothing changes anywhere.
    Abort {
        /// The change.
        id: Id,
        /// The refusals.
        reason: String,
    },
    /// A process has the commit on all its workers.
    Ack {
        /// The change.
        id: Id,
    },
}

/// Why a request was answered with nothing changed when the frames ended first.
pub const STOPPED: &str = "the pipeline stopped";

/// The answer to a request: the settings now in force, or why nothing changed.
pub type Answer = oneshot::Receiver<Result<Arc<Knobs>, String>>;

/// A request of this process, waiting for its answer.
struct Asked {
    reply: oneshot::Sender<Result<Arc<Knobs>, String>>,
    /// The settings in force here once this process has the commit.
    knobs: Option<Arc<Knobs>>,
    /// Processes that have the commit.
    acks: usize,
}

/// Worker 0's count of the votes on one model change.
#[derive(Default)]
struct Tally {
    /// Known once the request arrived (a vote may come first).
    change: Option<Change>,
    /// The request (the asking process's own yes) and the votes so far.
    answers: usize,
    refusals: Vec<String>,
}

#[derive(Default)]
struct State {
    outbox: Vec<Msg>,
    wake: Option<SyncActivator>,
    closed: bool,
    asked: HashMap<Id, Asked>,
    tally: HashMap<Id, Tally>,
    /// Models this process loaded for a change not yet everywhere.
    loaded: HashMap<Id, Arc<Model>>,
    /// Workers of this process that have a commit.
    received: HashMap<Id, usize>,
}

/// One process's end of the control messages.
pub struct Relay {
    shape: Shape,
    next: AtomicU64,
    /// Whether the outbox holds anything: the control operator looks at it whenever the
    /// frames' frontier moves, so it must cost one atomic load while nothing changes.
    pending: AtomicBool,
    state: Mutex<State>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub(super) fn new(shape: Shape) -> Relay {
        Relay {
            shape,
            next: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    /// Where this process sits in its cluster.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether global worker `index` is its process's first, the one that sends this
    /// process's messages and acts on the others'.
    pub fn sends(&self, index: usize) -> bool {
        index.is_multiple_of(self.shape.threads.max(1))
    }

    /// The control operator of the sending worker wakes with `wake` when a message waits.
    pub fn attach(&self, wake: SyncActivator) {
        self.state().wake = Some(wake);
    }

    /// Moves the messages waiting to go out into `into`.
    pub fn take(&self, into: &mut Vec<Msg>) {
        if self.pending.swap(false, Ordering::AcqRel) {
            into.append(&mut self.state().outbox);
        }
    }

    /// The frames ended: no change can take effect any more; waiting requests are
    /// answered with an error, and new ones at once.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        for (_, asked) in state.asked.drain() {
            let _ = asked.reply.send(Err(STOPPED.into()));
        }
    }

    fn send(&self, state: &mut State, msg: Msg) {
        state.outbox.push(msg);
        self.pending.store(true, Ordering::Release);
        if let Some(wake) = &state.wake {
            // fails only once the worker is gone, when nothing will change any more
            let _ = wake.activate();
        }
    }

    pub(super) fn request(&self, change: Change, model: Option<Arc<Model>>) -> Answer {
        let (reply, answer) = oneshot::channel();
        let mut state = self.state();
        if state.closed {
            let _ = reply.send(Err(STOPPED.into()));
            return answer;
        }
        let id = (
            self.shape.process as u32,
            self.next.fetch_add(1, Ordering::Relaxed),
        );
        if let Some(m) = model {
            state.loaded.insert(id, m);
        }
        state.asked.insert(
            id,
            Asked {
                reply,
                knobs: None,
                acks: 0,
            },
        );
        self.send(&mut state, Msg::Request { id, change });
        answer
    }

    fn needs_votes(&self, change: &Change) -> bool {
        matches!(change, Change::Model { .. }) && self.shape.processes > 1
    }

    /// Worker 0: commits or aborts a model change once every process answered.
    fn decide(&self, state: &mut State, id: Id) {
        let done = state
            .tally
            .get(&id)
            .is_some_and(|t| t.change.is_some() && t.answers >= self.shape.processes);
        if !done {
            return;
        }
        let Some(Tally {
            change: Some(change),
            refusals,
            ..
        }) = state.tally.remove(&id)
        else {
            return;
        };
        let msg = if refusals.is_empty() {
            Msg::Commit { id, change }
        } else {
            Msg::Abort {
                id,
                reason: refusals.join("; "),
            }
        };
        self.send(state, msg);
    }
}

impl Controls {
    /// Acts on `msg`, which worker `index` received at frame time `time`; `knobs` are
    /// that worker's settings, which a commit replaces (then returns `true`).
    pub fn on_message(
        self: &Arc<Self>,
        index: usize,
        time: Seq,
        msg: &Msg,
        knobs: &mut Arc<Knobs>,
    ) -> bool {
        let relay = &self.relay;
        let shape = relay.shape;
        let first = relay.sends(index);
        let sequencer = index == 0;
        match msg {
            Msg::Request { id, change } if first => {
                if relay.needs_votes(change) && id.0 as usize != shape.process {
                    self.load_and_vote(*id, change.clone());
                }
                if sequencer {
                    let mut state = relay.state();
                    if relay.needs_votes(change) {
                        let t = state.tally.entry(*id).or_default();
                        t.change = Some(change.clone());
                        t.answers += 1;
                        relay.decide(&mut state, *id);
                    } else {
                        relay.send(
                            &mut state,
                            Msg::Commit {
                                id: *id,
                                change: change.clone(),
                            },
                        );
                    }
                }
                false
            }
            Msg::Vote { id, refusal } if sequencer => {
                let mut state = relay.state();
                let t = state.tally.entry(*id).or_default();
                t.answers += 1;
                t.refusals.extend(refusal.clone());
                relay.decide(&mut state, *id);
                false
            }
            Msg::Commit { id, change } => {
                let mut state = relay.state();
                let model = state.loaded.get(id).cloned();
                *knobs = Arc::new(knobs.after(change, model));
                let have = state.received.entry(*id).or_default();
                *have += 1;
                if *have >= shape.threads.max(1) {
                    state.received.remove(id);
                    state.loaded.remove(id);
                    self.publish(Arc::clone(knobs));
                    tracing::info!(
                        change = ?change,
                        from_seq = time,
                        version = knobs.version,
                        model_version = knobs.model_version,
                        threshold = knobs.threshold_or(None),
                        muted = ?knobs.muted,
                        "change in force"
                    );
                    if let Some(asked) = state.asked.get_mut(id) {
                        asked.knobs = Some(Arc::clone(knobs));
                    }
                    relay.send(&mut state, Msg::Ack { id: *id });
                }
                true
            }
            Msg::Abort { id, reason } if first => {
                let mut state = relay.state();
                state.loaded.remove(id);
                tracing::error!(reason = %reason, asked_of_process = id.0, "a change was refused by a process of the cluster; the old settings stay in force everywhere");
                if let Some(asked) = state.asked.remove(id) {
                    let _ = asked.reply.send(Err(reason.clone()));
                }
                false
            }
            Msg::Ack { id } if first && id.0 as usize == shape.process => {
                let mut state = relay.state();
                let done = state.asked.get_mut(id).is_some_and(|a| {
                    a.acks += 1;
                    a.acks >= shape.processes
                });
                if done {
                    if let Some(Asked {
                        reply,
                        knobs: Some(k),
                        ..
                    }) = state.asked.remove(id)
                    {
                        let _ = reply.send(Ok(k));
                    }
                }
                false
            }
            _ => false,
        }
    }

    /// Loads the model of another process's request off the workers, and votes.
    fn load_and_vote(self: &Arc<Self>, id: Id, change: Change) {
        let controls = Arc::clone(self);
        std::thread::spawn(move || {
            let relay = &controls.relay;
            let refusal = match controls.validate(&change) {
                Ok(model) => {
                    if let Some(m) = model {
                        relay.state().loaded.insert(id, m);
                    }
                    None
                }
                Err(e) => {
                    let why = format!("process {}: {e}", relay.shape.process);
                    tracing::error!(reason = %why, "this process cannot load the model another process was asked to swap in; the cluster keeps the old one");
                    Some(why)
                }
            };
            let mut state = relay.state();
            relay.send(&mut state, Msg::Vote { id, refusal });
        });
    }
}
