use dtx::command_handler;

#[derive(Debug)]
struct Greet {
    name: String,
}

#[derive(Debug)]
enum GreetError {
    Empty,
}

#[command_handler]
async fn greet(cmd: Greet) -> Result<String, GreetError> {
    if cmd.name.is_empty() {
        return Err(GreetError::Empty);
    }
    Ok(cmd.name)
}

fn main() {}
