//! Every process of a cluster must run the same dataflow: timely tracks progress per
//! operator and peer, so a process that builds other operators (another variant, incident
//! mode on one process only) hangs or panics the cluster. Before the real dataflow, every
//! worker broadcasts a description of what it is about to build, and each refuses to go
//! on if any differs: a clear error on every process instead of a hang.

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::bail;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect, Probe, ToStream};
use timely::worker::Worker;

/// Checks with every other worker that `description` is the same everywhere; returns an
/// error naming the first worker that differs (the same error on every worker, so that
/// they all stop).
pub fn agree(worker: &mut Worker, description: &str) -> anyhow::Result<()> {
    let index = worker.index();
    let heard: Rc<RefCell<Vec<(usize, String)>>> = Rc::default();
    let sink = Rc::clone(&heard);
    let mine = vec![(index, description.to_string())];
    let probe = worker.dataflow::<u64, _, _>(|scope| {
        mine.to_stream(scope)
            .broadcast()
            .inspect(move |d| sink.borrow_mut().push(d.clone()))
            .probe()
            .0
    });
    while !probe.done() {
        worker.step_or_park(None);
    }
    let mut heard = heard.take();
    heard.sort();
    let Some((_, first)) = heard.first() else {
        return Ok(());
    };
    if let Some((other, theirs)) = heard.iter().find(|(_, d)| d != first) {
        bail!(
            "the processes of this cluster were started with different settings: worker 0 runs {first}, worker {other} runs {theirs}; start every process with the same dataflow, window, stride, batch and incident flags"
        );
    }
    Ok(())
}
