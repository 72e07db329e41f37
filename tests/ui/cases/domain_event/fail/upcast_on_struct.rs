use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

fn v1_to_v2(v1: serde_json::Value) -> serde_json::Value { v1 }

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(version = 2, upcast(from = 1, with = v1_to_v2))]
struct OrderPlaced {}

fn main() {}
