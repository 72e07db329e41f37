//! A saga's steps and compensations as a diagram: Mermaid or Graphviz DOT.

use crate::args::GraphFormat;
use dtx::saga::{SagaShape, StepShape};
use dtx_postgres::health::human;
use std::fmt::Write as _;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Start and end states.
    Terminal,
    /// A step's action.
    Step,
    /// A step's compensation.
    Undo,
}

struct Node {
    id: String,
    label: String,
    kind: Kind,
}

struct Edge {
    from: String,
    to: String,
    label: Option<String>,
    /// Taken when something fails or times out.
    failure: bool,
}

/// The nodes and edges of `saga`: the steps left to right, each failure (or wait that times
/// out) leading to the compensation of the latest step before it that has one, compensations
/// in reverse order down to `compensated`, and a compensation that keeps failing to `failed`.
fn model(saga: &SagaShape) -> (Vec<Node>, Vec<Edge>) {
    let mut nodes = vec![Node {
        id: "start".into(),
        label: saga.name.into(),
        kind: Kind::Terminal,
    }];
    let mut edges = Vec::new();
    let edge = |from: &str, to: &str, label: Option<String>, failure: bool| Edge {
        from: from.to_owned(),
        to: to.to_owned(),
        label,
        failure,
    };
    let step_id = |i: usize| format!("s{i}");
    let undo_id = |i: usize| format!("u{i}");
    // The compensation that undoes everything before step `i` (exclusive), if any.
    let undo_before = |i: usize, steps: &[StepShape]| {
        (0..i)
            .rev()
            .find(|&j| steps[j].compensation)
            .map_or_else(|| "compensated".to_owned(), undo_id)
    };
    let steps = &saga.steps;
    for (i, step) in steps.iter().enumerate() {
        nodes.push(Node {
            id: step_id(i),
            label: step.name.into(),
            kind: Kind::Step,
        });
    }
    edges.push(edge("start", &step_id(0), None, false));
    for (i, step) in steps.iter().enumerate() {
        let next = if i + 1 < steps.len() {
            step_id(i + 1)
        } else {
            "completed".to_owned()
        };
        let awaited = step.awaits.map(|event| match step.timeout {
            Some(timeout) => format!("{event} within {}", human(timeout)),
            None => event.to_owned(),
        });
        edges.push(edge(&step_id(i), &next, awaited, false));
        edges.push(edge(
            &step_id(i),
            &undo_before(i, steps),
            Some("fails".into()),
            true,
        ));
        if let Some(event) = step.awaits {
            edges.push(edge(
                &step_id(i),
                &undo_before(i + 1, steps),
                Some(format!("no {event} in time")),
                true,
            ));
        }
    }
    nodes.push(Node {
        id: "completed".into(),
        label: "completed".into(),
        kind: Kind::Terminal,
    });
    let mut any_undo = false;
    for (i, step) in steps.iter().enumerate().rev() {
        if !step.compensation {
            continue;
        }
        any_undo = true;
        nodes.push(Node {
            id: undo_id(i),
            label: format!("undo {}", step.name),
            kind: Kind::Undo,
        });
        edges.push(edge(&undo_id(i), &undo_before(i, steps), None, false));
        edges.push(edge(
            &undo_id(i),
            "failed",
            Some("keeps failing".into()),
            true,
        ));
    }
    nodes.push(Node {
        id: "compensated".into(),
        label: "compensated".into(),
        kind: Kind::Terminal,
    });
    if any_undo {
        nodes.push(Node {
            id: "failed".into(),
            label: "failed".into(),
            kind: Kind::Terminal,
        });
    }
    (nodes, edges)
}

/// `saga` in `format`.
pub(crate) fn render(saga: &SagaShape, format: GraphFormat) -> String {
    let (nodes, edges) = model(saga);
    let mut text = String::new();
    match format {
        GraphFormat::Mermaid => {
            let _ = writeln!(text, "flowchart LR");
            for node in &nodes {
                let label = node.label.replace('"', "'");
                let _ = match node.kind {
                    Kind::Terminal => writeln!(text, "    {}([\"{label}\"])", node.id),
                    Kind::Step => writeln!(text, "    {}[\"{label}\"]", node.id),
                    Kind::Undo => writeln!(text, "    {}[/\"{label}\"/]", node.id),
                };
            }
            for e in &edges {
                let _ = match (&e.label, e.failure) {
                    (None, false) => writeln!(text, "    {} --> {}", e.from, e.to),
                    (None, true) => writeln!(text, "    {} -.-> {}", e.from, e.to),
                    (Some(l), false) => writeln!(text, "    {} -- \"{l}\" --> {}", e.from, e.to),
                    (Some(l), true) => writeln!(text, "    {} -. \"{l}\" .-> {}", e.from, e.to),
                };
            }
        }
        GraphFormat::Dot => {
            let _ = writeln!(text, "digraph \"{}\" {{", saga.name);
            let _ = writeln!(text, "    rankdir=LR;");
            let _ = writeln!(text, "    node [shape=box, style=rounded];");
            for node in &nodes {
                let label = node.label.replace('"', "'");
                let shape = match node.kind {
                    Kind::Terminal => ", shape=oval",
                    Kind::Step => "",
                    Kind::Undo => ", shape=parallelogram",
                };
                let _ = writeln!(text, "    {} [label=\"{label}\"{shape}];", node.id);
            }
            for e in &edges {
                let mut attrs = Vec::new();
                if let Some(l) = &e.label {
                    attrs.push(format!("label=\"{l}\""));
                }
                if e.failure {
                    attrs.push("style=dashed".to_owned());
                }
                let attrs = if attrs.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", attrs.join(", "))
                };
                let _ = writeln!(text, "    {} -> {}{attrs};", e.from, e.to);
            }
            let _ = writeln!(text, "}}");
        }
    }
    text
}
