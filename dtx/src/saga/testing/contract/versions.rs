//! Contract cases for saga definition versions: a saga runs to its end on the definition it
//! started on, while that version is registered; it is parked as failed, with the reason, when
//! its version is gone or its steps changed under the same version; a worker of an older deploy
//! leaves a newer saga alone; compensation finds completed steps by name.
//!
//! The definitions are built with [`SagaBuilder`] so that one process can "deploy" several:
//! each scenario starts sagas with an orchestrator that has one set of versions, and runs them
//! with the workers of another, on the same store.

use crate::SharedEventStore;
use crate::saga::{
    BoxFuture, ManualClock, SagaBuilder, SagaDefinition, SagaError, SagaEvent, SagaOrchestrator,
    SagaStatus, SagaStore, SagaWorker, StepContext, StepResult, WorkerOptions,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The versioned saga's name.
const NAME: &str = "ContractVersioned";

/// The versioned saga's data: which steps and compensations ran, and under which version.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Trail {
    ran: Vec<String>,
}

/// A step or compensation that records `label` in the saga's data.
fn mark(
    label: &'static str,
) -> impl for<'a> Fn(&'a mut Trail, &'a StepContext) -> BoxFuture<'a, StepResult> + Send + Sync + 'static
{
    move |trail, _ctx| {
        Box::pin(async move {
            trail.ran.push(label.to_owned());
            Ok(Vec::new())
        })
    }
}

/// How long `charge` waits for `Approved`.
const WAIT: Duration = Duration::from_secs(60);

/// Version 1: `reserve`, `charge` (then waits for `Approved`), `ship`; the first two compensate.
fn v1() -> SagaDefinition<Trail> {
    SagaBuilder::new(NAME)
        .add_step("reserve", mark("v1 reserve"))
        .add_compensation("reserve", mark("v1 undo reserve"))
        .add_step("charge", mark("v1 charge"))
        .await_event("Approved", WAIT)
        .add_compensation("charge", mark("v1 undo charge"))
        .add_step("ship", mark("v1 ship"))
        .build()
        .unwrap()
}

/// Version 2: `check_fraud` inserted between `reserve` and `charge`.
fn v2() -> SagaDefinition<Trail> {
    SagaBuilder::new(NAME)
        .version(2)
        .add_step("reserve", mark("v2 reserve"))
        .add_compensation("reserve", mark("v2 undo reserve"))
        .add_step("check_fraud", mark("v2 check_fraud"))
        .add_step("charge", mark("v2 charge"))
        .await_event("Approved", WAIT)
        .add_compensation("charge", mark("v2 undo charge"))
        .add_step("ship", mark("v2 ship"))
        .build()
        .unwrap()
}

/// Version 3: version 1's steps reordered (`charge` first).
fn v3_reordered() -> SagaDefinition<Trail> {
    SagaBuilder::new(NAME)
        .version(3)
        .add_step("charge", mark("v3 charge"))
        .await_event("Approved", WAIT)
        .add_compensation("charge", mark("v3 undo charge"))
        .add_step("reserve", mark("v3 reserve"))
        .add_compensation("reserve", mark("v3 undo reserve"))
        .add_step("ship", mark("v3 ship"))
        .build()
        .unwrap()
}

/// Version 1 edited in place (`ship` removed) without a new version: a mistake.
fn v1_edited() -> SagaDefinition<Trail> {
    SagaBuilder::new(NAME)
        .add_step("reserve", mark("v1' reserve"))
        .add_compensation("reserve", mark("v1' undo reserve"))
        .add_step("charge", mark("v1' charge"))
        .await_event("Approved", WAIT)
        .add_compensation("charge", mark("v1' undo charge"))
        .build()
        .unwrap()
}

/// One deploy: an orchestrator with some versions registered, and its worker, on the shared
/// store and clock.
fn deploy(
    store: &Arc<dyn SagaStore>,
    events: &SharedEventStore,
    clock: &ManualClock,
    versions: Vec<SagaDefinition<Trail>>,
) -> (SagaOrchestrator, SagaWorker) {
    let mut builder = SagaOrchestrator::builder(Arc::clone(store))
        .events(Arc::clone(events))
        .clock(Arc::new(clock.clone()));
    for definition in versions {
        builder = builder.saga(definition);
    }
    let orchestrator = builder.build().unwrap();
    let worker = orchestrator.worker(WorkerOptions {
        lease: Duration::from_secs(30),
        ..WorkerOptions::default()
    });
    (orchestrator, worker)
}

/// Starts a saga on version 1 and runs it until it waits for `Approved` (after `reserve` and
/// `charge`).
async fn started_on_v1(
    store: &Arc<dyn SagaStore>,
    events: &SharedEventStore,
    clock: &ManualClock,
) -> Uuid {
    let (orchestrator, worker) = deploy(store, events, clock, vec![v1()]);
    let id = v1()
        .handle()
        .start(&orchestrator, Trail::default())
        .await
        .unwrap();
    worker.run_until_idle().await.unwrap();
    let saga = orchestrator.status(id).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Waiting, "{:?}", saga.last_error);
    assert_eq!(
        (saga.definition_version, saga.definition_fingerprint),
        (1, Some(v1().fingerprint())),
        "the saga stores the definition it started on"
    );
    id
}

fn approved() -> SagaEvent {
    SagaEvent::new("Approved", &()).unwrap()
}

async fn trail(orchestrator: &SagaOrchestrator, id: Uuid) -> Vec<String> {
    let saga = orchestrator.status(id).await.unwrap();
    serde_json::from_value::<Trail>(saga.data).unwrap().ran
}

/// A saga started on version 1 finishes on version 1 after version 2 (a step inserted in the
/// middle) is deployed beside it, and new sagas start on version 2; starting on version 1 is
/// then refused.
pub async fn started_sagas_finish_on_their_version(
    store: Arc<dyn SagaStore>,
    events: SharedEventStore,
) {
    let clock = ManualClock::default();
    assert_ne!(v1().fingerprint(), v2().fingerprint());
    let old = started_on_v1(&store, &events, &clock).await;

    let (orchestrator, worker) = deploy(&store, &events, &clock, vec![v1(), v2()]);
    assert_eq!(orchestrator.versions(NAME), [1, 2]);
    let new = v2()
        .handle()
        .start(&orchestrator, Trail::default())
        .await
        .unwrap();
    let started = orchestrator.status(new).await.unwrap();
    assert_eq!(
        (started.definition_version, started.definition_fingerprint),
        (2, Some(v2().fingerprint())),
        "new sagas start on the newest version"
    );
    assert!(matches!(
        v1().handle().start(&orchestrator, Trail::default()).await,
        Err(SagaError::Superseded {
            version: 1,
            latest: 2,
            ..
        })
    ));

    orchestrator.handle_event(old, approved()).await.unwrap();
    worker.run_until_idle().await.unwrap();
    let saga = orchestrator.status(old).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Completed, "{:?}", saga.last_error);
    assert_eq!(
        trail(&orchestrator, old).await,
        ["v1 reserve", "v1 charge", "v1 ship"],
        "version 1's steps, and only those"
    );
    assert_eq!(saga.definition_version, 1);

    orchestrator.handle_event(new, approved()).await.unwrap();
    worker.run_until_idle().await.unwrap();
    assert_eq!(
        orchestrator.status(new).await.unwrap().status,
        SagaStatus::Completed
    );
    assert_eq!(
        trail(&orchestrator, new).await,
        ["v2 reserve", "v2 check_fraud", "v2 charge", "v2 ship"]
    );
}

/// A saga whose version is no longer registered, or whose version's steps changed without a
/// new version, is parked as failed with an error naming the saga, its stored version and
/// fingerprint, and the registered versions; no step of another definition runs. A worker
/// that knows only older versions leaves a newer saga to the workers that know its version.
pub async fn retired_or_edited_versions_park_the_saga(
    store: Arc<dyn SagaStore>,
    events: SharedEventStore,
) {
    let clock = ManualClock::default();
    let retired = started_on_v1(&store, &events, &clock).await;
    let edited = started_on_v1(&store, &events, &clock).await;

    // Version 1 is gone.
    let (orchestrator, worker) = deploy(&store, &events, &clock, vec![v2()]);
    orchestrator
        .handle_event(retired, approved())
        .await
        .unwrap();
    worker.run_until_idle().await.unwrap();
    let saga = orchestrator.status(retired).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Failed);
    let error = saga.last_error.clone().unwrap_or_default();
    for needle in [
        format!("saga `{NAME}` {retired}"),
        format!("version 1 (fingerprint {})", v1().fingerprint()),
        "version 1 is no longer registered".to_owned(),
        format!(
            "Registered versions: 2 (fingerprint {})",
            v2().fingerprint()
        ),
    ] {
        assert!(error.contains(&needle), "`{needle}` in: {error}");
    }
    assert_eq!(
        trail(&orchestrator, retired).await,
        ["v1 reserve", "v1 charge"],
        "nothing ran after the deploy"
    );
    let names: Vec<&str> = saga.completed.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(names, ["reserve", "charge"], "kept for the operator");

    // Version 1 edited in place.
    let (orchestrator, worker) = deploy(&store, &events, &clock, vec![v1_edited(), v2()]);
    orchestrator.handle_event(edited, approved()).await.unwrap();
    worker.run_until_idle().await.unwrap();
    let saga = orchestrator.status(edited).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Failed);
    let error = saga.last_error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "the steps of version 1 changed since (its fingerprint is {} now)",
            v1_edited().fingerprint()
        )),
        "{error}"
    );
    assert_eq!(
        trail(&orchestrator, edited).await,
        ["v1 reserve", "v1 charge"]
    );

    // A worker of the older deploy (version 1 only) meets a saga started on version 2.
    let (newer, new_worker) = deploy(&store, &events, &clock, vec![v1(), v2()]);
    let id = v2().handle().start(&newer, Trail::default()).await.unwrap();
    let (_, old_worker) = deploy(&store, &events, &clock, vec![v1()]);
    old_worker.run_until_idle().await.unwrap();
    let saga = newer.status(id).await.unwrap();
    assert_eq!(
        (saga.status, saga.completed.len()),
        (SagaStatus::Running, 0),
        "left alone: {:?}",
        saga.last_error
    );
    // Once the old worker's lease expires, a worker with version 2 runs it.
    clock.advance(Duration::from_secs(31));
    new_worker.run_until_idle().await.unwrap();
    assert_eq!(
        trail(&newer, id).await,
        ["v2 reserve", "v2 check_fraud", "v2 charge"]
    );
}

/// A saga started on version 1 compensates on version 1 after a version that reorders the
/// steps is deployed: the completed steps are undone by name, latest first.
pub async fn compensation_after_a_reorder_undoes_by_name(
    store: Arc<dyn SagaStore>,
    events: SharedEventStore,
) {
    let clock = ManualClock::default();
    let id = started_on_v1(&store, &events, &clock).await;
    let (orchestrator, worker) = deploy(&store, &events, &clock, vec![v1(), v3_reordered()]);
    // `Approved` does not come in time.
    clock.advance(WAIT + Duration::from_secs(1));
    worker.run_until_idle().await.unwrap();
    let saga = orchestrator.status(id).await.unwrap();
    assert_eq!(
        saga.status,
        SagaStatus::Compensated,
        "{:?}",
        saga.last_error
    );
    assert_eq!(
        trail(&orchestrator, id).await,
        [
            "v1 reserve",
            "v1 charge",
            "v1 undo charge",
            "v1 undo reserve"
        ]
    );
    assert!(saga.completed.iter().all(|c| c.compensated));
}
