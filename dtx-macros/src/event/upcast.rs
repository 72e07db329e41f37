//! The rules of a variant's upcast chain (`#[event(version = 3, upcast(from = 1, ..), ..)]`).

use super::raw::RawUpcast;
use super::{Upcast, UpcastKind};
use darling::util::SpannedValue;

/// The validated chain, oldest step first: each step names one of `with` and `type`, steps go
/// up one version at a time without a gap or a repeat, the last one from `version - 1`, and no
/// JSON step follows a typed one. Every mistake is pushed to `errors`, under the user's tokens.
pub(super) fn validate(
    raw: &[SpannedValue<RawUpcast>],
    version: u32,
    version_attr: Option<&SpannedValue<u32>>,
    errors: &mut darling::error::Accumulator,
) -> Vec<Upcast> {
    let mut steps: Vec<Upcast> = Vec::new();
    let mut previous: Option<u32> = None;
    let mut typed = false;
    for step in raw {
        let from = *step.from;
        let from_span = step.from.span();
        let kind = kind(step, errors);
        if from == 0 {
            errors.push(
                darling::Error::custom(
                    "schema versions start at 1: the oldest upcast is `upcast(from = 1, ..)`",
                )
                .with_span(&from_span),
            );
            continue;
        }
        if from >= version {
            let message = if version_attr.is_none() {
                format!(
                    "an upcast goes from an older version to the current one, but the event is at \
                     version 1 (the default): write `version = {}` on this variant",
                    from + 1
                )
            } else {
                format!(
                    "the event is at version {version}, so an upcast goes from version {} at the \
                     latest: remove this step or raise `version` to {}",
                    version - 1,
                    from + 1
                )
            };
            errors.push(darling::Error::custom(message).with_span(&from_span));
            continue;
        }
        if let Some(previous) = previous {
            if from <= previous {
                errors.push(
                    darling::Error::custom(format!(
                        "upcast steps go oldest first, each one version above the previous: \
                         after `from = {previous}` comes `from = {}`{}",
                        previous + 1,
                        if from == previous {
                            "; this step repeats it"
                        } else {
                            ""
                        }
                    ))
                    .with_span(&from_span),
                );
                continue;
            }
            if from > previous + 1 {
                let missing: Vec<String> = (previous + 1..from)
                    .map(|v| format!("`upcast(from = {v}, ..)`"))
                    .collect();
                errors.push(
                    darling::Error::custom(format!(
                        "the upcast chain has a gap: nothing says how version {} becomes {}; \
                         add {} before this step",
                        previous + 1,
                        previous + 2,
                        missing.join(", ")
                    ))
                    .with_span(&from_span),
                );
            }
        }
        previous = Some(from);
        let Some(kind) = kind else { continue };
        match kind {
            UpcastKind::Typed(_) => typed = true,
            UpcastKind::Json(_) if typed => {
                errors.push(
                    darling::Error::custom(
                        "a JSON step (`with = ..`) cannot follow a typed step (`type = ..`): the \
                         typed versions convert `From` one into the next up to the current type; \
                         write this step with `type = ..` too, or the earlier ones with `with = ..`",
                    )
                    .with_span(&step.span()),
                );
            }
            UpcastKind::Json(_) => {}
        }
        steps.push(Upcast { from, kind });
    }
    check_reaches_current(previous, version, version_attr, errors);
    steps
}

/// What a step does: `with` or `type`, exactly one of them.
fn kind(
    step: &SpannedValue<RawUpcast>,
    errors: &mut darling::error::Accumulator,
) -> Option<UpcastKind> {
    let from = *step.from;
    match (&step.with, &step.ty) {
        (Some(path), None) => Some(UpcastKind::Json(path.clone())),
        (None, Some(ty)) => Some(UpcastKind::Typed(ty.0.clone())),
        (Some(_), Some(_)) => {
            errors.push(
                darling::Error::custom(
                    "an upcast step is either `with = fn` (on the JSON) or `type = OldType` \
                     (a typed old version), not both: keep one",
                )
                .with_span(&step.span()),
            );
            None
        }
        (None, None) => {
            errors.push(
                darling::Error::custom(format!(
                    "an upcast step says how version {from} becomes {}: add \
                     `with = v{from}_to_v{}` (a fn from `serde_json::Value` to `Value`) or \
                     `type = OldType` (the payload of version {from}, `Deserialize`, which \
                     converts `From` into the next)",
                    from + 1,
                    from + 1
                ))
                .with_span(&step.span()),
            );
            None
        }
    }
}

/// The last step goes from `version - 1`: the error under `version = N` otherwise.
fn check_reaches_current(
    previous: Option<u32>,
    version: u32,
    version_attr: Option<&SpannedValue<u32>>,
    errors: &mut darling::error::Accumulator,
) {
    if let (Some(last), Some(version_attr)) = (previous, version_attr)
        && last + 1 < version
    {
        let missing: Vec<String> = (last + 1..version)
            .map(|v| format!("`upcast(from = {v}, ..)`"))
            .collect();
        errors.push(
            darling::Error::custom(format!(
                "the upcast chain stops at version {} but the event is at version {version}: add {}",
                last + 1,
                missing.join(", ")
            ))
            .with_span(&version_attr.span()),
        );
    }
}
