use dtx::command_handler;
use dtx::cqrs::State;

#[derive(Debug)]
struct Greet {
    name: String,
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

impl std::error::Error for Refused {}

#[command_handler]
async fn greet(State(greeting): State<&'static str>, cmd: Greet) -> Result<String, Refused> {
    Ok(format!("{greeting}, {}", cmd.name))
}

fn main() {}
