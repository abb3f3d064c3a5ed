"""Operator commands: replay dead letters, inspect jobs, reprocess a prediction, show the pipeline's status.

Each module holds plain functions that take Google and Replicate clients as arguments and return
typed results, plus their renderings (a text table for people, JSON for scripts);
`replicate_relay.ops.commands` adapts them to `relay`.
"""
