use dtx::command_handler;

struct Ship;

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

#[command_handler]
async fn ship_by_truck(_cmd: Ship) -> Result<&'static str, Never> {
    Ok("truck")
}

// A second handler of one command: each declares what executing `Ship` returns.
#[command_handler]
async fn ship_by_boat(_cmd: Ship) -> Result<&'static str, Never> {
    Ok("boat")
}

fn main() {}
