//! Ad propagation benchmark (filled below).

fn main() {}
