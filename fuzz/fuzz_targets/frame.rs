//! A request body or Kafka message as a client frame: gzip or plain JSON, through the
//! fast path and the general decoder (see `checks::frame`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::frame(data));
