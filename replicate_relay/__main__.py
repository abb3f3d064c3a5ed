"""`relay`: the Replicate Relay command line."""

from replicate_relay.cli import main

raise SystemExit(main())
