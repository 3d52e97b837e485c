//! llm-server: the command-line entry point.

fn main() {}
