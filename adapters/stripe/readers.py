"""The Stripe payload readers the read side is given (`projections/buyer_facts.StripeReaders`):
the read models store the facts these read from each recorded event, observation and fetched
line items, and never look at Stripe's JSON themselves."""

from adapters.stripe.facts import facts_from_event
from adapters.stripe.fields import line_items_from_stripe
from adapters.stripe.observations import facts_from_observation, observation_id
from projections.buyer_facts import StripeReaders

STRIPE_READERS = StripeReaders(
    facts_from_event=facts_from_event,
    facts_from_observation=facts_from_observation,
    observation_id=observation_id,
    line_items_from_stripe=line_items_from_stripe,
)
