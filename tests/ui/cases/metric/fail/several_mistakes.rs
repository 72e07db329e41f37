#[derive(Clone, Copy)]
pub enum Method {
    Card,
}

impl dtx::telemetry::MetricLabel for Method {
    fn metric_label(&self) -> &'static str {
        "card"
    }
}

const REGION: &str = "eu";

#[dtx::metric(
    name = "",
    labels(outcome = "paid", service = "payments", service = "billing", region = REGION),
    arg_labels(method, method, currency)
)]
const fn charge(method: Method, amount: u64) -> u64 {
    let _ = method;
    amount
}

fn main() {
    let _ = charge(Method::Card, 1);
}
