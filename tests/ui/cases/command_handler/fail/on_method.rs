use dtx::command_handler;

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

struct Greeter {
    greeting: String,
}

impl Greeter {
    #[command_handler]
    async fn greet(&self, cmd: Greet) -> Result<String, Refused> {
        Ok(format!("{}, {}", self.greeting, cmd.name))
    }
}

fn main() {}
