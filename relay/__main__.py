"""`python -m relay`: the Replicate Relay command line."""

from relay.cli import main

raise SystemExit(main())
