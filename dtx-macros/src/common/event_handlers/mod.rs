//! What `#[projection]` and `#[consumer]` share: an inherent `impl` block of `async` handlers, one
//! per event payload type, each taking the payload first and then, in any order, parameters
//! recognised by their types. [`Kind`] tells the two apart; `validate` checks a block and its
//! handlers, `expand` holds the pieces of their generated code that are alike.

mod expand;
mod validate;

pub(crate) use expand::{distinct_event_types, event_types, handled, result};
pub(crate) use validate::{
    Handler, Name, anchor, check_block, check_common, check_name, extra, handlers, output_span,
    parse, resolved_name, type_ident, typed_arguments,
};

/// Which macro a block of handlers belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `#[projection]`; a subscription's handlers get no unit of work.
    Projection { subscription: bool },
    /// `#[consumer]`.
    Consumer,
}

impl Kind {
    /// The attribute's name, `projection` in `#[projection]`.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Self::Projection { .. } => "projection",
            Self::Consumer => "consumer",
        }
    }

    /// The trait the macro implements.
    fn trait_name(self) -> &'static str {
        match self {
            Self::Projection { .. } => "Projection",
            Self::Consumer => "Consumer",
        }
    }

    /// A type name for examples.
    fn example_type(self) -> &'static str {
        match self {
            Self::Projection { .. } => "OrderSummary",
            Self::Consumer => "Payments",
        }
    }

    /// What a suggested handler looks like after its name.
    pub(crate) fn handler_example(self) -> &'static str {
        match self {
            Self::Projection { .. } => "(&self, event: &OrderPlaced) -> Result<(), MyError>",
            Self::Consumer => {
                "(&self, event: &OrderPlaced, uow: &mut dyn UnitOfWork) -> Result<(), MyError>"
            }
        }
    }

    /// The parameters a handler may take after the event.
    fn extras(self) -> &'static str {
        match self {
            Self::Projection { .. } => {
                "`meta: &RecordedEvent`, `uow: &mut dyn UnitOfWork` and `inv: &mut Invalidations`"
            }
            Self::Consumer => "`message: &InboundMessage` and `uow: &mut dyn UnitOfWork`",
        }
    }

    /// Why a handler takes `&self`.
    fn shared(self) -> &'static str {
        match self {
            Self::Projection { .. } => {
                "the runner shares the projection, and its state belongs in the read model"
            }
            Self::Consumer => {
                "the inbox shares the consumer between deliveries, and its state belongs in the \
                 database, written through the unit of work"
            }
        }
    }

    /// What the name is the key of.
    fn name_key(self) -> &'static str {
        match self {
            Self::Projection { .. } => "a projection name is the key of its checkpoint",
            Self::Consumer => {
                "a consumer name is the key of its inbox records, dead letters and offsets"
            }
        }
    }

    /// Whether a handler of this kind may take `extra`; `Err` says why not and what to write.
    fn admits(self, extra: Extra, handler: &syn::Ident) -> Result<(), String> {
        match (self, extra) {
            (Self::Projection { subscription: true }, Extra::UnitOfWork) => Err(format!(
                "a subscription's handlers get no unit of work: their effects leave the \
                 database, so nothing would commit with the checkpoint and an event may be \
                 handled again; remove this parameter, and take `meta: &RecordedEvent` to use \
                 `meta.event_id` as an idempotency key (or remove `subscription` to write a read \
                 model in `{handler}`)"
            )),
            (Self::Projection { .. }, Extra::Message) => Err(
                "a projection handles the events of its own store, not broker messages: take \
                 `meta: &RecordedEvent` instead (or handle the other service's messages in a \
                 `#[consumer]`)"
                    .to_owned(),
            ),
            (Self::Consumer, Extra::Recorded) => Err(
                "a consumer handles messages from a broker, not stored events: take `message: \
                 &InboundMessage` instead (its id, headers, key and correlation id)"
                    .to_owned(),
            ),
            (Self::Consumer, Extra::Invalidations) => Err(
                "a consumer's handlers take no `&mut Invalidations`: query caches are invalidated \
                 by the projections that read the events; remove this parameter"
                    .to_owned(),
            ),
            _ => Ok(()),
        }
    }
}

/// A parameter a handler may take after the event, recognised by its type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extra {
    /// `&RecordedEvent` (projections): the stored event's id, position, metadata.
    Recorded,
    /// `&InboundMessage` (consumers): the message's id, headers, key.
    Message,
    /// `&mut dyn UnitOfWork`: the handler's writes commit with the checkpoint or inbox record.
    UnitOfWork,
    /// `&mut Invalidations` (projections): query cache entries to drop after the commit.
    Invalidations,
}

impl Extra {
    /// The type as a handler takes it.
    fn written(self) -> &'static str {
        match self {
            Self::Recorded => "&RecordedEvent",
            Self::Message => "&InboundMessage",
            Self::UnitOfWork => "&mut dyn UnitOfWork",
            Self::Invalidations => "&mut Invalidations",
        }
    }
}
