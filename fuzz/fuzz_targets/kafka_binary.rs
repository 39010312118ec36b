//! A Kafka message as a `TWF1` binary frame (see `checks::kafka_binary`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::kafka_binary(data));
