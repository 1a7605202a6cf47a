//! `sliver-init`: pid 1 of a sliver, and (as `sliver-init enter`) the helper that turns a
//! fresh process into a sliver's command. Started by the node (never by hand); see
//! `node::sliver::init` and `node::sliver::enter`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = if args.get(1).map(String::as_str) == Some(node::sliver::enter::SUBCOMMAND) {
        node::sliver::enter::main_from_args(&args)
    } else {
        // Started from a sealed memory copy, the kernel named it after its descriptor.
        let _ = nix::sys::prctl::set_name(c"sliver-init");
        node::sliver::init::main_from_args(&args)
    };
    std::process::exit(code);
}
