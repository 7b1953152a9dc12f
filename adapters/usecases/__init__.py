"""The application's use cases: recording Stripe events, linking, catalogues, history, audit,
and Stripe as a second source (backfill, import, reconcile)."""
