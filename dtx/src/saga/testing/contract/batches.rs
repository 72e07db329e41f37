//! Contract cases for batches: [`SagaStore::save_many`] decides each save alone, and several
//! workers claiming and saving many sagas at once run every saga to its end, each step once and
//! never two transitions of one saga at the same time.

use crate::SharedEventStore;
use crate::saga::{
    BoxFuture, SagaBuilder, SagaDefinition, SagaOrchestrator, SagaRecord, SagaSave, SagaStatus,
    SagaStore, StepContext, StepResult, WorkerOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// The batch contract's saga data: how many steps ran.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Tally {
    steps: u32,
}

/// What the steps of each `Tally` saga saw: the steps that ran, in order, and whether one
/// began while another of the same saga was running.
#[derive(Debug, Default)]
struct Visits {
    running: bool,
    overlapped: bool,
    steps: Vec<&'static str>,
}

/// The visits of every `Tally` saga, by saga id (ids are fresh UUIDs, so suites running in
/// parallel never share an entry).
static VISITS: LazyLock<Mutex<HashMap<Uuid, Visits>>> = LazyLock::new(Mutex::default);

fn visits() -> std::sync::MutexGuard<'static, HashMap<Uuid, Visits>> {
    VISITS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records that `step` of `ctx`'s saga runs, letting other tasks run meanwhile.
async fn visit(ctx: &StepContext, step: &'static str) {
    {
        let mut all = visits();
        let saga = all.entry(ctx.saga_id).or_default();
        saga.overlapped |= saga.running;
        saga.running = true;
        saga.steps.push(step);
    }
    tokio::task::yield_now().await;
    if let Some(saga) = visits().get_mut(&ctx.saga_id) {
        saga.running = false;
    }
}

/// A step that records its visit and counts itself in the saga's data.
fn step(
    name: &'static str,
) -> impl for<'a> Fn(&'a mut Tally, &'a StepContext) -> BoxFuture<'a, StepResult> + Send + Sync + 'static
{
    move |tally, ctx| {
        Box::pin(async move {
            visit(ctx, name).await;
            tally.steps += 1;
            Ok(Vec::new())
        })
    }
}

/// Three steps that record their visits.
fn tally() -> SagaDefinition<Tally> {
    SagaBuilder::new("ContractTally")
        .add_step("first", step("first"))
        .add_step("second", step("second"))
        .add_step("third", step("third"))
        .build()
        .unwrap()
}

/// `save_many` decides each save as `save` would, alone: a save at the next version under the
/// lease is written (its lease renewed or released), one under another owner or at a stale
/// version is refused, one that cannot be stored fails with `Unstorable`; none affects another.
pub async fn save_many_decides_each_save_alone(
    store: Arc<dyn SagaStore>,
    events: SharedEventStore,
) {
    let _ = events;
    assert!(store.save_many(&[]).await.is_empty());
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for n in 0..5 {
        let record = SagaRecord::new(
            "ContractTally",
            serde_json::json!({ "steps": n }),
            now,
            None,
            None,
        );
        store.insert(&record).await.unwrap();
        ids.push(record.id);
    }
    let claimed = store
        .claim("batcher", now, Duration::from_secs(30), 100)
        .await
        .unwrap();
    let mut records: Vec<SagaRecord> = ids
        .iter()
        .map(|id| claimed.iter().find(|r| r.id == *id).unwrap().clone())
        .collect();
    for record in &mut records {
        record.step = 1;
        record.data = serde_json::json!({ "steps": 99 });
        record.version += 1;
    }
    // The third is a version ahead of the stored one; the fourth cannot be stored.
    records[2].version += 1;
    records[3].data = serde_json::json!({ "note": "a\u{0}b" });
    let renewed = Some(now + chrono::Duration::seconds(60));
    // The second is saved for a worker that does not hold it; the last releases its lease.
    let owners = ["batcher", "another", "batcher", "batcher", "batcher"];
    let saves: Vec<SagaSave<'_>> = records
        .iter()
        .zip(owners)
        .enumerate()
        .map(|(n, (record, owner))| SagaSave {
            record,
            owner,
            lease_until: if n == 4 { None } else { renewed },
        })
        .collect();
    let outcomes = store.save_many(&saves).await;
    assert_eq!(outcomes.len(), 5);
    assert!(matches!(outcomes[0], Ok(true)), "{:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Ok(false)), "{:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Ok(false)), "{:?}", outcomes[2]);
    match &outcomes[3] {
        Err(crate::Error::Unstorable { what, .. }) => {
            assert!(what.contains(&ids[3].to_string()), "{what}");
        }
        other => panic!("NUL in saga data must be refused, got {other:?}"),
    }
    assert!(matches!(outcomes[4], Ok(true)), "{:?}", outcomes[4]);

    let stored = |n: usize| {
        let store = Arc::clone(&store);
        let id = ids[n];
        async move { store.get(id).await.unwrap().unwrap() }
    };
    let first = stored(0).await;
    assert_eq!((first.version, first.step), (2, 1));
    assert_eq!(first.data["steps"], 99);
    assert_eq!(first.lease_owner.as_deref(), Some("batcher"));
    assert_eq!(
        first.lease_expires_at.map(|t| t.timestamp()),
        renewed.map(|t| t.timestamp())
    );
    for n in 1..=3 {
        let unchanged = stored(n).await;
        assert_eq!(
            (
                unchanged.version,
                unchanged.step,
                unchanged.data["steps"].as_u64()
            ),
            (1, 0, Some(u64::try_from(n).unwrap())),
            "saga {n} unchanged"
        );
    }
    let released = stored(4).await;
    assert_eq!((released.version, released.step), (2, 1));
    assert_eq!(
        (released.lease_owner, released.lease_expires_at),
        (None, None)
    );
}

/// Four workers, each claiming eight sagas at a time and saving their transitions together,
/// run 60 three-step sagas to completion: every step of every saga exactly once and in order,
/// never two transitions of one saga at the same time.
pub async fn several_workers_run_each_saga_once(
    store: Arc<dyn SagaStore>,
    events: SharedEventStore,
) {
    let orchestrator = SagaOrchestrator::builder(Arc::clone(&store))
        .events(events)
        .saga(tally())
        .build()
        .unwrap();
    let handle = tally().handle();
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(handle.start(&orchestrator, Tally::default()).await.unwrap());
    }
    let workers: Vec<_> = (0..4)
        .map(|n| {
            let worker = orchestrator.worker(WorkerOptions {
                id: format!("batch-worker-{n}-{}", Uuid::new_v4()),
                batch: 8,
                lease: Duration::from_secs(60),
                poll_interval: Duration::from_millis(5),
            });
            tokio::spawn(async move { worker.run_until_idle().await })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    for id in &ids {
        let saga = store.get(*id).await.unwrap().unwrap();
        assert_eq!(saga.status, SagaStatus::Completed, "saga {id}");
        assert_eq!(saga.data["steps"], 3, "saga {id}");
        assert_eq!(saga.version, 4, "saga {id}: one save per step");
        assert_eq!(saga.lease_owner, None, "saga {id}: its lease released");
        let all = visits();
        let seen = all.get(id).unwrap();
        assert_eq!(seen.steps, ["first", "second", "third"], "saga {id}");
        assert!(!seen.overlapped, "saga {id}: two transitions at once");
    }
}
