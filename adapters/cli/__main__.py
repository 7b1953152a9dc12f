"""`python -m adapters.cli`: the `entitlements` command line."""

from adapters.cli.main import main

main()
