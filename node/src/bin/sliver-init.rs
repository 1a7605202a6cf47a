//! `sliver-init`: pid 1 of a sliver. Started by the node (never by hand) with the fds of its
//! plan and status pipes; see `node::sliver::init`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(node::sliver::init::main_from_args(&args));
}
