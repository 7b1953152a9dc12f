"""The `entitlements` command line."""
