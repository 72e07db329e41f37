// Every mistake is reported at once, each under its own tokens.
use dtx::command_handler;
use dtx::cqrs::CommandContext;

#[derive(Debug)]
struct Greet {
    name: String,
}

#[command_handler]
fn greet<T>(ctx: &CommandContext, cmd: &mut Greet, greeting: &str) {
    cmd.name.push_str(greeting);
    let _ = ctx;
}

fn main() {}
